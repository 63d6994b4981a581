"""Fused 8-bit AdamW step: dequantize m, v → AdamW update of θ → requantize m, v, in one pass.

Each program takes ROWS quantization blocks of BLOCK values (one by default): it reads θ, g, the uint8 codes of m
and v and their block absmax values, and writes θ, the new codes and absmax. m and v never exist in fp32 outside registers, so the step
moves 2·|θ| + |g| + 2 + 8/BLOCK bytes per parameter, against 2·|θ| + |g| + 4·|θ| for torch's fused AdamW (moments
in the parameter dtype). Requantization finds the nearest code-book entry, #{midpoints < x}, in one of two ways:
  binary: a branchless binary search over the 255 midpoints (8 gathers from a 1 KiB table that stays in L1);
  table:  the float's exponent and top 8 mantissa bits index a table of #{midpoints below the bucket} (its buckets
          are narrower than the code book's spacing, so at most one midpoint lies inside one), and one comparison
          with that next midpoint finishes: 2 gathers and integer arithmetic.
Rule and code books: methods/adamw8bit.py, methods/quant.py.
H100, LLaMA-1b shapes (bench_adamw8bit, cc26320, one run): table search, one block per program, one warp (8 values
per thread) 8.82 ms against torch fused AdamW's 8.98 ms (0.98 ×); with 2 or 4 warps per block 11.9 ms; 2 blocks × 2
warps 9.07, 4 × 4 9.22 ms; the binary search 16.1-19.1 ms over the same grid. Measured slower before: one launch per
step through a table of addresses (18.3 ms); the nearest code from the map's structure (27.8 ms).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from methods.quant import dynamic_map, midpoints

GUESS_SHIFT = tl.constexpr(15)  # 23 mantissa bits less the 8 that index the table
GUESS_KEY_MIN = tl.constexpr(103 << 8)  # |x| < 2^-24 (below every nonzero midpoint) all land in bucket 0
GUESS_BUCKETS = tl.constexpr((127 << 8) - (103 << 8) + 1)  # up to |x| in [1, 1 + 2^-8)


def guess_table(mid: torch.Tensor) -> torch.Tensor:
    """uint8 [2 · GUESS_BUCKETS]: for a bucket [lo, hi) of |x|, #{mid < lo} (x ≥ 0), then #{mid ≤ −hi} (x < 0)."""
    keys = torch.arange(GUESS_KEY_MIN.value, GUESS_KEY_MIN.value + GUESS_BUCKETS.value, dtype=torch.int64)
    lo = (keys << GUESS_SHIFT.value).to(torch.int32).view(torch.float32).clone()
    hi = ((keys + 1) << GUESS_SHIFT.value).to(torch.int32).view(torch.float32)
    lo[0] = 0.0
    below_pos, below_neg = torch.searchsorted(mid, lo), torch.searchsorted(mid, -hi, right=True)
    inside_pos = torch.searchsorted(mid, hi) - below_pos
    inside_neg = torch.searchsorted(mid, -lo, right=True) - below_neg
    if max(int(inside_pos.max()), int(inside_neg.max())) > 1:
        raise ValueError("code book spacing finer than the guess table's buckets")
    return torch.cat([below_pos, below_neg]).to(torch.uint8)


@triton.jit
def _nearest_code_table(x, guess_ptr, mid_ptr):
    """#{midpoints < x} by table: mid_ptr holds the 255 midpoints and +inf."""
    bits = x.to(tl.int32, bitcast=True)
    bucket = tl.minimum(tl.maximum(((bits & 0x7FFFFFFF) >> GUESS_SHIFT) - GUESS_KEY_MIN, 0), GUESS_BUCKETS - 1)
    guess = tl.load(guess_ptr + bucket + tl.where(bits < 0, GUESS_BUCKETS, 0)).to(tl.int32)
    return guess + (tl.load(mid_ptr + guess) < x).to(tl.int32)


@triton.jit
def _nearest_code(x, mid_ptr):
    """Index of the nearest code for x: the number of (sorted) midpoints strictly below x."""
    lo = tl.zeros(x.shape, dtype=tl.int32)
    for shift in tl.static_range(8):
        step = 128 >> shift
        probe = tl.load(mid_ptr + lo + step - 1)
        lo = tl.where(probe < x, lo + step, lo)
    return lo


@triton.jit
def _store_rounded(ptr, x, mask, TO_BF16: tl.constexpr):
    """Store fp32 x, rounding to nearest-even bf16 by bit arithmetic where the target is bf16: the same result on
    the GPU and in the Triton interpreter (whose own fp32 → bf16 cast truncates)."""
    if TO_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        tl.store(ptr, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adamw8bit_kernel(p_ptr, g_ptr, m_codes_ptr, m_absmax_ptr, v_codes_ptr, v_absmax_ptr,
                      signed_ptr, unsigned_ptr, signed_mid_ptr, unsigned_mid_ptr, signed_guess_ptr, unsigned_guess_ptr,
                      n, n_blocks, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, bias2_sqrt,
                      BLOCK: tl.constexpr, ROWS: tl.constexpr, TO_BF16: tl.constexpr, BY_TABLE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's quantization blocks
    row_mask = rows < n_blocks
    offs = rows[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    theta = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m_code = tl.load(m_codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    v_code = tl.load(v_codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    m = tl.load(signed_ptr + m_code) * tl.load(m_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    v = tl.load(unsigned_ptr + v_code) * tl.load(v_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    theta = theta * decay - step_size * m / (tl.sqrt(v) / bias2_sqrt + eps)
    _store_rounded(p_ptr + offs, theta, mask, TO_BF16)
    m = tl.where(mask, m, 0.0)
    v = tl.where(mask, v, 0.0)
    m_absmax = tl.max(tl.abs(m), axis=1)
    v_absmax = tl.max(v, axis=1)
    # the floor is float32's smallest normal: a smaller literal (1e-38 was here) is typed fp64 by Triton, and with it
    # the division and everything after it
    m_normalized = m / tl.maximum(m_absmax, 1.1754943508222875e-38)[:, None]
    v_normalized = v / tl.maximum(v_absmax, 1.1754943508222875e-38)[:, None]
    if BY_TABLE:
        m_codes = _nearest_code_table(m_normalized, signed_guess_ptr, signed_mid_ptr)
        v_codes = _nearest_code_table(v_normalized, unsigned_guess_ptr, unsigned_mid_ptr)
    else:
        m_codes = _nearest_code(m_normalized, signed_mid_ptr)
        v_codes = _nearest_code(v_normalized, unsigned_mid_ptr)
    tl.store(m_codes_ptr + offs, m_codes.to(tl.uint8), mask=mask)
    tl.store(v_codes_ptr + offs, v_codes.to(tl.uint8), mask=mask)
    tl.store(m_absmax_ptr + rows, m_absmax, mask=row_mask)
    tl.store(v_absmax_ptr + rows, v_absmax, mask=row_mask)


_TABLES: dict = {}


def _tables(device: torch.device):
    if device not in _TABLES:
        books = dynamic_map(True), dynamic_map(False)
        mids = [torch.cat([midpoints(book), torch.tensor([float("inf")])]) for book in books]
        _TABLES[device] = [t.to(device) for t in (*books, *mids, *map(guess_table, mids))]
    return _TABLES[device]


def adamw8bit_step(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, step: float, block: int = 256, rows: int = 1,
                   num_warps: int = 1, nearest: str = "table") -> None:
    """In-place 8-bit AdamW step of one parameter; `state` holds m_codes, m_absmax, v_codes, v_absmax. Each program
    updates `rows` quantization blocks with `num_warps` warps; nearest: "table" or "binary" (bench_adamw8bit times
    a grid of the three)."""
    if not (p.is_contiguous() and grad.is_contiguous()):
        raise ValueError("adamw8bit_step needs contiguous parameter and gradient")
    if block & (block - 1):
        raise ValueError(f"the kernel needs a power-of-two block, got {block}")
    if nearest not in ("table", "binary"):
        raise ValueError(f"nearest={nearest!r}: one of 'table', 'binary'")
    if rows & (rows - 1):
        raise ValueError(f"the kernel needs a power-of-two number of blocks per program, got {rows}")
    n = p.numel()
    n_blocks = triton.cdiv(n, block)
    _adamw8bit_kernel[(triton.cdiv(n_blocks, rows),)](
        p, grad, state["m_codes"], state["m_absmax"], state["v_codes"], state["v_absmax"], *_tables(p.device),
        # 1 - β in double precision, then rounded once: 1 - fp32(0.999) is 1.3e-5 away from 0.001
        n, n_blocks, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, 1.0 - lr * weight_decay, lr / (1.0 - beta1**step),
        (1.0 - beta2**step) ** 0.5,
        BLOCK=block, ROWS=rows, TO_BF16=p.dtype == torch.bfloat16, BY_TABLE=nearest == "table", num_warps=num_warps)
