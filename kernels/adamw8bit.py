"""Fused 8-bit AdamW step: dequantize m, v → AdamW update of θ → requantize m, v, in one pass.

One program per quantization block (BLOCK values) of any parameter — all parameters of a step go in one launch
through a table of their addresses, as torch's fused AdamW does (per-parameter launches cost ~30 µs each in
Python, 6.6 ms a step at LLaMA-1b on an H100). A program reads θ, g, the uint8 codes of m and v and their two block
absmax values, and writes θ, the new codes and absmax. m and v never exist in fp32 outside registers, so the step
moves 2·|θ| + |g| + 2 + 8/BLOCK bytes per parameter — the same order as torch's fused AdamW with fp32 state
(2·|θ| + |g| + 16). Requantization finds the nearest code-book entry with a branchless binary search over the 255
midpoints (8 gathers from a 1 KiB table that stays in L1). Rule and code books: methods/adamw8bit.py, methods/quant.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from methods.quant import dynamic_map, midpoints


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
def _adamw8bit_kernel(table_ptr, owner_ptr, first_block_ptr, numel_ptr, scalars_ptr, n_tensors,
                      signed_ptr, unsigned_ptr, signed_mid_ptr, unsigned_mid_ptr,
                      beta1, beta2, eps, decay, P_TYPE: tl.constexpr, BLOCK: tl.constexpr, TO_BF16: tl.constexpr):
    """One program per quantization block of any of the tensors: `owner` maps the block to its tensor, whose six
    addresses (θ, g, m codes, m absmax, v codes, v absmax) are rows of `table` (multi-tensor apply: one launch per
    step, not one per parameter)."""
    pid = tl.program_id(0)
    t = tl.load(owner_ptr + pid)
    block = pid - tl.load(first_block_ptr + t)
    n = tl.load(numel_ptr + t)
    p_ptr = tl.load(table_ptr + t).to(tl.pointer_type(P_TYPE))
    g_ptr = tl.load(table_ptr + n_tensors + t).to(tl.pointer_type(P_TYPE))
    m_codes_ptr = tl.load(table_ptr + 2 * n_tensors + t).to(tl.pointer_type(tl.uint8))
    m_absmax_ptr = tl.load(table_ptr + 3 * n_tensors + t).to(tl.pointer_type(tl.float32))
    v_codes_ptr = tl.load(table_ptr + 4 * n_tensors + t).to(tl.pointer_type(tl.uint8))
    v_absmax_ptr = tl.load(table_ptr + 5 * n_tensors + t).to(tl.pointer_type(tl.float32))
    step_size = tl.load(scalars_ptr + 2 * t)
    bias2_sqrt = tl.load(scalars_ptr + 2 * t + 1)

    offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    theta = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m_code = tl.load(m_codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    v_code = tl.load(v_codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    m = tl.load(signed_ptr + m_code) * tl.load(m_absmax_ptr + block)
    v = tl.load(unsigned_ptr + v_code) * tl.load(v_absmax_ptr + block)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    theta = theta * decay - step_size * m / (tl.sqrt(v) / bias2_sqrt + eps)
    _store_rounded(p_ptr + offs, theta, mask, TO_BF16)
    m = tl.where(mask, m, 0.0)
    v = tl.where(mask, v, 0.0)
    m_absmax = tl.max(tl.abs(m), axis=0)
    v_absmax = tl.max(v, axis=0)
    m_codes = _nearest_code(m / tl.maximum(m_absmax, 1e-38), signed_mid_ptr)
    v_codes = _nearest_code(v / tl.maximum(v_absmax, 1e-38), unsigned_mid_ptr)
    tl.store(m_codes_ptr + offs, m_codes.to(tl.uint8), mask=mask)
    tl.store(v_codes_ptr + offs, v_codes.to(tl.uint8), mask=mask)
    tl.store(m_absmax_ptr + block, m_absmax)
    tl.store(v_absmax_ptr + block, v_absmax)


_TABLES: dict = {}
_LAYOUTS: dict = {}
_POINTER_TYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _tables(device: torch.device):
    if device not in _TABLES:
        signed, unsigned = dynamic_map(True, device), dynamic_map(False, device)
        _TABLES[device] = (signed, unsigned, midpoints(signed).contiguous(), midpoints(unsigned).contiguous())
    return _TABLES[device]


def _layout(numels: tuple[int, ...], block: int, device: torch.device):
    """Block → tensor map, first block of each tensor and sizes; the same parameter list gives the same layout."""
    key = (numels, block, device)
    if key not in _LAYOUTS:
        blocks = torch.tensor([-(-n // block) for n in numels])
        owner = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), blocks)
        first = torch.cumsum(blocks, 0) - blocks
        _LAYOUTS[key] = (owner.to(device), first.to(torch.int32).to(device),
                         torch.tensor(numels, dtype=torch.int64, device=device))
    return _LAYOUTS[key]


def adamw8bit_multi_step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], lr: float,
                         beta1: float, beta2: float, eps: float, weight_decay: float, steps: list[float],
                         block: int = 256) -> None:
    """In-place 8-bit AdamW step of several parameters of one dtype and device in a single launch; each state holds
    m_codes, m_absmax, v_codes, v_absmax; steps[i] is parameter i's step count (already incremented)."""
    if block & (block - 1):
        raise ValueError(f"the kernel needs a power-of-two block, got {block}")
    device, dtype = params[0].device, params[0].dtype
    for p, g in zip(params, grads, strict=True):
        if p.device != device or p.dtype != dtype or g.dtype != dtype:
            raise ValueError("adamw8bit_multi_step needs parameters and gradients of one dtype and device")
        if not (p.is_contiguous() and g.is_contiguous()):
            raise ValueError("adamw8bit_step needs contiguous parameter and gradient")
    keys = ("m_codes", "m_absmax", "v_codes", "v_absmax")
    addresses = [t.data_ptr() for t in params] + [t.data_ptr() for t in grads]
    addresses += [s[k].data_ptr() for k in keys for s in states]
    table = torch.tensor(addresses, dtype=torch.int64).to(device, non_blocking=True)
    scalars = torch.tensor([x for step in steps for x in (lr / (1.0 - beta1**step), (1.0 - beta2**step) ** 0.5)],
                           dtype=torch.float32).to(device, non_blocking=True)
    owner, first, numel = _layout(tuple(p.numel() for p in params), block, device)
    _adamw8bit_kernel[(owner.numel(),)](
        table, owner, first, numel, scalars, len(params), *_tables(device), beta1, beta2, eps, 1.0 - lr * weight_decay,
        P_TYPE=_POINTER_TYPES[dtype], BLOCK=block, TO_BF16=dtype == torch.bfloat16)


def adamw8bit_step(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, step: float, block: int = 256) -> None:
    """In-place 8-bit AdamW step of one parameter (the multi-tensor kernel with one tensor)."""
    adamw8bit_multi_step([p], [grad], [state], lr, beta1, beta2, eps, weight_decay, [step], block)
