"""The fused 8-bit AdamW kernel against the plain-torch rule (dequantize → AdamW → requantize), on odd sizes.
Runs on CPU through TRITON_INTERPRET=1 (tests/conftest.py), on the GPU natively."""
import pytest
import torch
import triton
import triton.language as tl

from membench_kernels.adamw8bit import (
    _nearest_code,
    _nearest_code_table,
    _tables,
    adamw8bit_step,
    adamw8bit_step_many,
    guess_table,
)
from membench_kernels.common import triton_interpreted
from membench_kernels.quant import dynamic_map, midpoints
from methods.adamw8bit import _step_torch, init_state

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_step(p, g, state, lr, b1, b2, eps, wd, step, block):
    """The rule, via the optimizer's plain-torch path (itself checked against the paper in tests/methods)."""
    _step_torch(p, g, state, lr, b1, b2, eps, wd, step, block_size=block)


@triton.jit
def nearest(y_ptr, out_ptr, mid_ptr, guess_ptr, n, B: tl.constexpr, BY_TABLE: tl.constexpr, KEY_BITS: tl.constexpr,
            BY_ASM: tl.constexpr):
    offs = tl.program_id(0) * B + tl.arange(0, B)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    if BY_TABLE:
        tl.store(out_ptr + offs, _nearest_code_table(y, guess_ptr, KEY_BITS, BY_ASM), mask=mask)
    else:
        tl.store(out_ptr + offs, _nearest_code(y, mid_ptr), mask=mask)


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance between two bf16 tensors in units in the last place of the reference."""
    ulp = torch.exp2(torch.floor(torch.log2(b.float().abs().clamp(min=1e-30))) - 7)
    return float(((a.float() - b.float()).abs() / ulp).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,block,rows,nearest", [(1000, 256, 1, "table"), (77, 32, 1, "binary"),
                                                  (4096 + 3, 256, 1, "table"), (1000, 64, 4, "binary"),
                                                  (77, 16, 8, "table")])
def test_kernel_matches_plain_torch(dtype, n, block, rows, nearest):
    gen = torch.Generator().manual_seed(n)
    theta = torch.randn(n, generator=gen).to(dtype).to(DEVICE)
    grads = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for _ in range(3)]
    state_kernel = init_state(theta, block)
    state_ref = {k: v.clone() if torch.is_tensor(v) else v for k, v in state_kernel.items()}
    p_kernel, p_ref = theta.clone(), theta.clone()
    for step, g in enumerate(grads, start=1):
        args = (1e-2, 0.9, 0.999, 1e-8, 0.01, float(step))
        adamw8bit_step(p_kernel, g, state_kernel, *args, block=block, rows=rows, num_warps=2 if rows > 1 else 4,
                       nearest=nearest)
        reference_step(p_ref, g, state_ref, *args, block)
        if dtype == torch.float32:
            torch.testing.assert_close(p_kernel, p_ref, rtol=1e-6, atol=1e-6)
        else:  # both round the fp32 result to nearest-even bf16; fp32 rounding order may flip one ulp
            assert bf16_ulps(p_kernel, p_ref) <= 1
        assert_states_close(state_kernel, state_ref)


def assert_states_close(ours: dict, ref: dict) -> None:
    torch.testing.assert_close(ours["m_absmax"], ref["m_absmax"], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(ours["v_absmax"], ref["v_absmax"], rtol=1e-5, atol=1e-12)
    for key in ("m_codes", "v_codes"):
        differ = (ours[key].int() - ref[key].int()).abs()
        # a value within rounding of a midpoint may pick the neighbour code; never further
        assert differ.numel() == 0 or (differ.max() <= 1 and (differ > 0).float().mean() < 0.01), key


def test_one_launch_updates_many_tensors_like_one_at_a_time():
    """Tensors of odd and of 16-multiple sizes (one empty, one a view not 16-byte aligned), two dtypes and two step
    counts in one call: each ends as the plain rule leaves it."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(1000, torch.float32), (3, torch.bfloat16), (0, torch.float32), (777, torch.bfloat16),
             (300, torch.float32), (4096 + 5, torch.bfloat16), (2048, torch.bfloat16), (1024 + 16, torch.bfloat16),
             (512, torch.float32), (1024, torch.float32)]  # the last four: the launch of aligned tensors
    params = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n, dtype in sizes]
    params[4] = torch.randn(303, generator=gen).to(DEVICE)[3:]  # starts 12 bytes into its storage
    grads = [torch.randn(p.shape, generator=gen).to(p.dtype).to(DEVICE) for p in params]
    states = [init_state(p, 64) for p in params]
    refs = [(p.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
            for p, state in zip(params, states, strict=True)]
    steps = [1.0, 1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    args = (1e-2, 0.9, 0.999, 1e-8, 0.01)
    adamw8bit_step_many(params, grads, states, *args, steps, block=64, rows=2, num_warps=2)
    for p, g, state, (p_ref, state_ref), step in zip(params, grads, states, refs, steps, strict=True):
        reference_step(p_ref, g, state_ref, *args, step, 64)
        if p.dtype == torch.float32:
            torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-6)
        elif p.numel():
            assert bf16_ulps(p, p_ref) <= 1
        assert_states_close(state, state_ref)


def test_kernel_rejects_non_power_of_two_block():
    p = torch.zeros(10, device=DEVICE)
    state = init_state(p, 24)
    with pytest.raises(ValueError, match="power-of-two"):
        adamw8bit_step(p, p.clone(), state, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, block=24)


@pytest.mark.parametrize("signed,key_bits", [(True, 6), (True, 8), (False, 7), (False, 8), (True, None),
                                             (False, None)])
def test_nearest_code_equals_bucketize(signed, key_bits):
    """Both of the kernel's searches for the nearest code (key_bits None: the binary search) are exact: the critical
    values are the midpoints (and their float neighbours), the decade edges and the table's bucket edges, all
    included."""
    mid = midpoints(dynamic_map(signed)).contiguous()
    bits = key_bits or 8
    _, _, *mids_and_guesses = _tables(torch.device(DEVICE), (bits, 8) if signed else (8, bits))
    mid_padded, guess = mids_and_guesses[0 if signed else 1], mids_and_guesses[2 if signed else 3]
    bucket_edges = torch.arange(103 << bits, (127 << bits) + 2) << (23 - bits)
    edges = torch.cat([torch.tensor([10.0**e for e in range(-8, 1)] + [0.0]),
                       bucket_edges.to(torch.int32).view(torch.float32)])
    y = torch.cat([torch.linspace(0, 1, 20001), torch.logspace(-9, 0, 20001), mid, edges,
                   torch.nextafter(mid, torch.tensor(2.0)), torch.nextafter(mid, torch.tensor(-2.0)),
                   torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-2.0))]).float()
    y = y[(y >= 0) & (y <= 1.1)]
    if signed:
        y = torch.cat([y, -y])
    y = y.contiguous().to(DEVICE)
    out = torch.empty(y.numel(), dtype=torch.int32, device=DEVICE)
    nearest[(triton.cdiv(y.numel(), 1024),)](y, out, mid_padded, guess, y.numel(), B=1024,
                                             BY_TABLE=key_bits is not None, KEY_BITS=bits,
                                             BY_ASM=not triton_interpreted())  # the kernel's inline-asm gather
    torch.testing.assert_close(out.long(), torch.bucketize(y, mid.to(DEVICE)), rtol=0, atol=0)


def test_guess_table_rejects_buckets_wider_than_the_code_spacing():
    mid = torch.cat([midpoints(dynamic_map(False)), torch.tensor([float("inf")])])
    with pytest.raises(ValueError, match="6 key bits"):
        guess_table(mid, 6)
