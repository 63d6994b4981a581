"""Fused 8-bit AdamW step: dequantize m, v → AdamW update of θ → requantize m, v, in one pass.

Each program takes ROWS quantization blocks of BLOCK values (two by default) of one tensor: it reads θ, g, the uint8
codes of m and v and their block absmax values, and writes θ, the new codes and absmax. m and v never exist in fp32
outside registers, so the step moves 2·|θ| + |g| + 2 + 8/BLOCK bytes per parameter, against 2·|θ| + |g| + 4·|θ| for
torch's fused AdamW (moments in the parameter dtype). Requantization finds the nearest code-book entry,
#{midpoints < x}, in one of two ways:
  binary: a branchless binary search over the 255 midpoints (8 gathers from a 1 KiB table that stays in L1);
  table:  the float's top 9 + k bits (sign, exponent, k mantissa bits; k = 6 for m, 7 for v) index a table whose
          int32 entry packs #{midpoints below the bucket} (buckets narrower than the code book's spacing, so at most
          one midpoint lies inside one) and that next midpoint's low 23 − k bits: a shift, one gather and an integer
          comparison.
One launch serves up to LAUNCH_TENSORS tensors: each program finds its tensor by a binary search over a small table
of first programs, and its storages by offsets from the first tensor's (in 16-byte units where aligned, so the
compiler can prove what vector loads need). Rule and code books: methods/adamw8bit.py, kernels/quant.py.
On an H200 at LLaMA-1b shapes, each call after 150 ms of matmuls, a step takes 0.79–0.82 × the time of torch's fused
AdamW (harness/benches/bench_adamw8bit.py); docs/kernels.md gives the figures, the grid of blocks and warps a program,
and what was measured not to help (tl.load gathers, the binary search, the code books' closed form).
"""
from __future__ import annotations

from itertools import accumulate

import torch
import triton
import triton.language as tl

from membench_kernels.common import to_device_async, triton_interpreted
from membench_kernels.quant import dynamic_map, midpoints

# mantissa bits of the table key, the fewest with at most one midpoint per bucket (guess_table checks): the smaller
# the table, the fewer L1 lines one warp's lookups touch
SIGNED_KEY_BITS, UNSIGNED_KEY_BITS = 6, 7
ROWS, NUM_WARPS = 2, 1  # quantization blocks and warps a program by default (bench_adamw8bit's grid varies them)


def guess_table(mid: torch.Tensor, key_bits: int) -> torch.Tensor:
    """int32 [2^(9 + key_bits)], indexed by a float's top 9 + key_bits bits (sign, exponent, key_bits of mantissa),
    so the key costs one shift. An entry packs, for the bucket of magnitudes [lo, hi), the guess #{mid < lo} (x ≥ 0),
    or #{mid ≤ −hi} (x < 0), in its low 8 bits, and above them the low 23 − key_bits bits of the next midpoint
    mid[guess] when that lies in the bucket (so shares the key's bits); else a value no x in the bucket passes
    (all ones for x ≥ 0, 0 for x < 0). mid: the sorted midpoints, +inf appended."""
    magnitudes = torch.arange(1 << (8 + key_bits), dtype=torch.int64)
    inf_bits = 0x7F800000  # buckets of inf and nan: lo = inf, so their guess is 255
    lo = (magnitudes << (23 - key_bits)).clamp(max=inf_bits).to(torch.int32).view(torch.float32)
    hi = ((magnitudes + 1) << (23 - key_bits)).clamp(max=inf_bits).to(torch.int32).view(torch.float32)
    below_pos, below_neg = torch.searchsorted(mid, lo), torch.searchsorted(mid, -hi, right=True)
    finite = lo < float("inf")
    inside_pos = (torch.searchsorted(mid, hi) - below_pos)[finite]
    inside_neg = (torch.searchsorted(mid, -lo, right=True) - below_neg)[finite]
    if max(int(inside_pos.max()), int(inside_neg.max())) > 1:
        raise ValueError(f"code book spacing finer than the guess table's buckets at {key_bits} key bits")
    below_pos, below_neg = below_pos.clamp(max=255), below_neg.clamp(max=255)
    low_mask = (1 << (23 - key_bits)) - 1
    next_pos, next_neg = mid[below_pos], mid[below_neg]
    low_pos = torch.where(next_pos < hi, next_pos.view(torch.int32) & low_mask, low_mask)
    low_neg = torch.where(next_neg <= -lo, next_neg.view(torch.int32) & low_mask, 0)
    return torch.cat([below_pos + (low_pos << 8), below_neg + (low_neg << 8)]).to(torch.int32)


@triton.jit
def _gather(ptrs, BY_ASM: tl.constexpr):
    """One 32-bit value from each pointer, cached in L1 with priority to stay. BY_ASM: by an elementwise inline
    ld.global instead of tl.load, so that the values come out in the layout of the pointers (the streaming loads'
    8 contiguous values a thread): Triton 3.6 gives a gather a layout of its own, one value a thread, and converts
    everything else to it and back through shared memory."""
    if BY_ASM:
        return tl.inline_asm_elementwise("ld.global.L1::evict_last.b32 $0, [$1];", "=r,l", [ptrs],
                                         dtype=ptrs.dtype.element_ty, is_pure=True, pack=1)
    return tl.load(ptrs, eviction_policy="evict_last")


@triton.jit
def _nearest_code_table(x, table_ptr, KEY_BITS: tl.constexpr, BY_ASM: tl.constexpr):
    """#{midpoints < x} by the packed table (guess_table): one gather, then x's low bits against the next
    midpoint's (the same bucket: for x < 0 a larger magnitude is the smaller float)."""
    bits = x.to(tl.uint32, bitcast=True)
    entry = _gather(table_ptr + (bits >> (23 - KEY_BITS)), BY_ASM)
    low = (bits & ((1 << (23 - KEY_BITS)) - 1)).to(tl.int32)
    next_low = entry >> 8
    passed = tl.where((bits >> 31) != 0, next_low > low, next_low < low)
    return (entry & 255) + passed.to(tl.int32)


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
def _store_rounded(ptr, x, mask, ROUND_BY_BITS: tl.constexpr):
    """Store fp32 x rounded to nearest-even: by the GPU's own conversion, or (ROUND_BY_BITS: a bf16 target in the
    Triton interpreter, whose fp32 → bf16 cast truncates) by bit arithmetic."""
    if ROUND_BY_BITS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        tl.store(ptr, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _element_offset(offsets_ptr, column: tl.constexpr, base_ptr, ALIGNED: tl.constexpr):
    """A tensor's start, in elements from base_ptr. ALIGNED: the table holds it in 16-byte units, and the product
    by the unit (not a hint) is what lets the compiler prove the alignment it needs for vector loads."""
    if ALIGNED:
        return tl.load(offsets_ptr + column) * (128 // base_ptr.dtype.element_ty.primitive_bitwidth)
    return tl.load(offsets_ptr + column)


@triton.jit
def _adamw8bit_kernel(p_base, g_base, m_codes_base, m_absmax_base, v_codes_base, v_absmax_base, numel,
                      offsets_ptr, numels_ptr, first_program_ptr,
                      signed_ptr, unsigned_ptr, signed_mid_ptr, unsigned_mid_ptr, signed_guess_ptr, unsigned_guess_ptr,
                      beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, inv_bias2_sqrt,
                      BLOCK: tl.constexpr, ROWS: tl.constexpr, ROUND_BY_BITS: tl.constexpr, BY_TABLE: tl.constexpr,
                      SIGNED_BITS: tl.constexpr, UNSIGNED_BITS: tl.constexpr, STREAM: tl.constexpr,
                      ALIGNED: tl.constexpr, LOG_TENSORS: tl.constexpr, SINGLE: tl.constexpr,
                      GATHER_ASM: tl.constexpr):
    # this program's work: ROWS quantization blocks of one tensor. SINGLE: the only one, of `numel` values. Else the
    # tensor whose first program is the last one ≤ this one (a branchless binary search over the 2^LOG_TENSORS first
    # programs, padded), whose six storages start at the given element offsets from the first tensor's
    pid = tl.program_id(0).to(tl.int64)
    if SINGLE:
        rows = pid * ROWS + tl.arange(0, ROWS)
        p_ptr, g_ptr, m_codes_ptr, m_absmax_ptr = p_base, g_base, m_codes_base, m_absmax_base
        v_codes_ptr, v_absmax_ptr, n = v_codes_base, v_absmax_base, numel
    else:
        tensor = 0
        for level in tl.static_range(LOG_TENSORS):
            probe = tensor + (1 << (LOG_TENSORS - 1 - level))
            tensor = tl.where(tl.load(first_program_ptr + probe) <= pid, probe, tensor)
        rows = (pid - tl.load(first_program_ptr + tensor)) * ROWS + tl.arange(0, ROWS)
        starts = offsets_ptr + 6 * tensor
        p_ptr = p_base + _element_offset(starts, 0, p_base, ALIGNED)
        g_ptr = g_base + _element_offset(starts, 1, g_base, ALIGNED)
        m_codes_ptr = m_codes_base + _element_offset(starts, 2, m_codes_base, ALIGNED)
        m_absmax_ptr = m_absmax_base + tl.load(starts + 3)
        v_codes_ptr = v_codes_base + _element_offset(starts, 4, v_codes_base, ALIGNED)
        v_absmax_ptr = v_absmax_base + tl.load(starts + 5)
        # ALIGNED: numel in units of 16, so the mask offs < n is provably constant over a vector's 16 elements
        n = tl.load(numels_ptr + tensor) * (16 if ALIGNED else 1)
    row_mask = rows < tl.cdiv(n, BLOCK)
    offs = rows[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = offs < n
    # STREAM: the values read once bypass L1 (".cg"), which then holds only the code books and tables
    g = tl.load(g_ptr + offs, mask=mask, other=0.0, cache_modifier=STREAM).to(tl.float32)
    theta = tl.load(p_ptr + offs, mask=mask, other=0.0, cache_modifier=STREAM).to(tl.float32)
    m_code = tl.load(m_codes_ptr + offs, mask=mask, other=0, cache_modifier=STREAM).to(tl.int32)
    v_code = tl.load(v_codes_ptr + offs, mask=mask, other=0, cache_modifier=STREAM).to(tl.int32)
    m = _gather(signed_ptr + m_code, GATHER_ASM) * \
        tl.load(m_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    v = _gather(unsigned_ptr + v_code, GATHER_ASM) * \
        tl.load(v_absmax_ptr + rows, mask=row_mask, other=0.0)[:, None]
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    theta = theta * decay - step_size * m / (tl.sqrt(v) * inv_bias2_sqrt + eps)
    _store_rounded(p_ptr + offs, theta, mask, ROUND_BY_BITS)
    m = tl.where(mask, m, 0.0)
    v = tl.where(mask, v, 0.0)
    m_absmax = tl.max(tl.abs(m), axis=1)
    v_absmax = tl.max(v, axis=1)
    # the floor is float32's smallest normal: a smaller literal (1e-38 was here) is typed fp64 by Triton, and with it
    # the division and everything after it
    # × the block's reciprocal, correctly rounded (one division a block, not a value; kernels/quant.py alike)
    m_normalized = m * tl.math.div_rn(1.0, tl.maximum(m_absmax, 1.1754943508222875e-38))[:, None]
    v_normalized = v * tl.math.div_rn(1.0, tl.maximum(v_absmax, 1.1754943508222875e-38))[:, None]
    if BY_TABLE:
        m_codes = _nearest_code_table(m_normalized, signed_guess_ptr, SIGNED_BITS, GATHER_ASM)
        v_codes = _nearest_code_table(v_normalized, unsigned_guess_ptr, UNSIGNED_BITS, GATHER_ASM)
    else:
        m_codes = _nearest_code(m_normalized, signed_mid_ptr)
        v_codes = _nearest_code(v_normalized, unsigned_mid_ptr)
    tl.store(m_codes_ptr + offs, m_codes.to(tl.uint8), mask=mask)
    tl.store(v_codes_ptr + offs, v_codes.to(tl.uint8), mask=mask)
    tl.store(m_absmax_ptr + rows, m_absmax, mask=row_mask)
    tl.store(v_absmax_ptr + rows, v_absmax, mask=row_mask)


_TABLES: dict = {}


def _tables(device: torch.device, key_bits: tuple[int, int] = (SIGNED_KEY_BITS, UNSIGNED_KEY_BITS)):
    """Code books (signed, unsigned), their midpoints (+inf appended), their guess tables at key_bits."""
    if (device, key_bits) not in _TABLES:
        books = dynamic_map(True), dynamic_map(False)
        mids = [torch.cat([midpoints(book), torch.tensor([float("inf")])]) for book in books]
        guesses = [guess_table(mid, bits) for mid, bits in zip(mids, key_bits, strict=True)]
        _TABLES[device, key_bits] = [t.to(device) for t in (*books, *mids, *guesses)]
    return _TABLES[device, key_bits]


LAUNCH_TENSORS = 32  # tensors a launch at most: the GPU starts on the first while the host prepares the rest
_WORK_TABLES: dict = {}  # the last launches' tables: the same storages (a training loop's) need no new one


def _work_table(members: list, aligned: bool, block: int, rows: int, device: torch.device):
    """(table, programs, log2 of its padded tensor count) for one launch over members, (storages, their starts,
    numel) each. The int64 table: each tensor's six starts from the first tensor's (in 16-byte units for aligned
    values, else in elements), numels (in units of 16 when aligned), first programs (padded to a power of two)."""
    key = (device, block, rows, *(start for _, starts, _ in members for start in starts),
           *(numel for _, _, numel in members))
    if key not in _WORK_TABLES:
        bases, base_starts, _ = members[0]
        unit_bytes = [16 if aligned and column not in (3, 5) else t.element_size()  # 3, 5: absmax, per block
                      for column, t in enumerate(bases)]
        offsets = [(start - base) // unit for _, starts, _ in members
                   for start, base, unit in zip(starts, base_starts, unit_bytes, strict=True)]
        numels = [numel // 16 if aligned else numel for _, _, numel in members]
        programs = [-(-numel // (block * rows)) for _, _, numel in members]
        log_tensors = (len(members) - 1).bit_length()
        first_program = [0, *accumulate(programs[:-1])] + [2**62] * (2**log_tensors - len(members))
        while len(_WORK_TABLES) >= 64:
            _WORK_TABLES.pop(next(iter(_WORK_TABLES)))
        _WORK_TABLES[key] = (to_device_async(offsets + numels + first_program, torch.int64, device), sum(programs),
                             log_tensors)
    return _WORK_TABLES[key]


def adamw8bit_step(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, step: float, **options) -> None:
    """In-place 8-bit AdamW step of one parameter; `state` holds m_codes, m_absmax, v_codes, v_absmax."""
    adamw8bit_step_many([p], [grad], [state], lr, beta1, beta2, eps, weight_decay, [step], **options)


def adamw8bit_step_many(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], lr: float,
                        beta1: float, beta2: float, eps: float, weight_decay: float, steps: list[float],
                        block: int = 256, rows: int = ROWS, num_warps: int = NUM_WARPS, nearest: str = "table",
                        key_bits: tuple[int, int] = (SIGNED_KEY_BITS, UNSIGNED_KEY_BITS), stream: bool = True,
                        gather_asm: bool = True) -> None:
    """In-place 8-bit AdamW step of many parameters, one launch per LAUNCH_TENSORS of a (dtypes, step count,
    alignment) group: launching once per tensor costs the host about the GPU's time for LLaMA-1b's 219 tensors.
    Each program updates `rows` quantization blocks with `num_warps` warps; nearest: "table" (key_bits: mantissa
    bits of its keys for m and v) or "binary"; stream: read θ, g and the codes past L1; gather_asm: the table
    search's gathers by inline asm (_gather; tl.load under the interpreter). bench_adamw8bit times a grid of these."""
    if block & (block - 1):
        raise ValueError(f"the kernel needs a power-of-two block, got {block}")
    if nearest not in ("table", "binary"):
        raise ValueError(f"nearest={nearest!r}: one of 'table', 'binary'")
    if rows & (rows - 1):
        raise ValueError(f"the kernel needs a power-of-two number of blocks per program, got {rows}")
    interpreted = triton_interpreted()

    def launch(group: tuple, members: list) -> None:
        dtype, _, device, step, aligned = group
        n, (bases, _, numel) = len(members), members[0]
        if n == 1:  # its own pointers: no table to build and copy (8-bit GaLore steps one matrix at a time)
            programs, log_tensors, tables = -(-numel // (block * rows)), 0, (None, None, None)
        else:
            table, programs, log_tensors = _work_table(members, aligned, block, rows, device)
            tables = (table, table[6 * n:], table[7 * n:])
        _adamw8bit_kernel[(programs,)](
            *bases, numel, *tables, *_tables(device, tuple(key_bits)),
            # 1 - β in double precision, then rounded once: 1 - fp32(0.999) is 1.3e-5 away from 0.001
            beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, 1.0 - lr * weight_decay, lr / (1.0 - beta1**step),
            (1.0 - beta2**step) ** -0.5,
            BLOCK=block, ROWS=rows, ROUND_BY_BITS=dtype == torch.bfloat16 and interpreted,
            BY_TABLE=nearest == "table", SIGNED_BITS=key_bits[0], UNSIGNED_BITS=key_bits[1],
            STREAM=".cg" if stream else "", ALIGNED=aligned, LOG_TENSORS=log_tensors, SINGLE=n == 1,
            GATHER_ASM=gather_asm and not interpreted, num_warps=num_warps)

    groups: dict = {}
    for p, g, state, step in zip(params, grads, states, steps, strict=True):
        if not (p.is_contiguous() and g.is_contiguous()):
            raise ValueError("adamw8bit_step needs contiguous parameter and gradient")
        storages = (p, g, state["m_codes"], state["m_absmax"], state["v_codes"], state["v_absmax"])
        starts = [t.data_ptr() for t in storages]
        aligned = p.numel() % 16 == 0 and not any(start % 16 for start in starts)
        group = (p.dtype, g.dtype, p.device, step, aligned)
        members = groups.setdefault(group, [])
        members.append((storages, starts, p.numel()))
        if len(members) == LAUNCH_TENSORS:
            launch(group, groups.pop(group))
    for group, members in groups.items():
        launch(group, members)
