"""Blockwise 8-bit quantization of optimizer state (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022): a tensor is cut into blocks of `block` values; each block stores its absmax in fp32 and
every value as the index (uint8) of the nearest entry of a fixed 256-entry code book of values in [-1, 1].

The code book is the dynamic-tree map: for exponents 10^-6 … 10^0, a growing number of linearly spaced fractions in
(0.1, 1), so small magnitudes keep relative precision (signed: 127 positive, 127 negative, 0 and 1; unsigned, for
the second moment: 254 positive, 0 and 1). Bytes per value: 1 + 4/block.
"""
from __future__ import annotations

from functools import cache

import torch

BLOCK = 256


@cache
def _dynamic_map_values(signed: bool) -> tuple[float, ...]:
    # plain Python, no torch op: a memory estimate traces under a dispatch mode where a tensor is fake and a value read
    # back (.tolist(), .item()) is a stand-in 1 (harness/memtrace.py), and the cache would keep either for the process
    values = [0.0, 1.0]
    for i in range(7):
        count = 2**i if signed else 2 ** (i + 1)
        edges = [0.1 + 0.9 * k / count for k in range(count + 1)]  # linspace(0.1, 1.0, count + 1)
        means = [(a + b) / 2 * 10.0 ** (i - 6) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        values += means + ([-v for v in means] if signed else [])
    assert len(values) == 256
    return tuple(sorted(values))


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(_dynamic_map_values(signed), dtype=torch.float32, device=device)


def midpoints(code_book: torch.Tensor) -> torch.Tensor:
    return (code_book[1:] + code_book[:-1]) / 2


def quantize(x: torch.Tensor, code_book: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 shaped like x, absmax fp32 per block) — nearest code-book entry of x / absmax(block)."""
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1)
    # × the reciprocal, as bitsandbytes' kernels do (and ours: one division a block)
    normalized = blocks * absmax.clamp(min=torch.finfo(torch.float32).tiny).reciprocal().unsqueeze(1)
    codes = torch.bucketize(normalized, midpoints(code_book)).to(torch.uint8)
    return codes.view(-1)[: flat.numel()].view(x.shape), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, code_book: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    flat = code_book[codes.reshape(-1).long()]
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block) * absmax.unsqueeze(1)
    return blocks.view(-1)[: flat.numel()].view(codes.shape)


# NF4 (Dettmers et al., "QLoRA", NeurIPS 2023, appendix E): the 16 quantiles of N(0, 1) normalized to [-1, 1],
# with an exact zero; information-theoretically optimal for normally distributed weights.
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


def nf4_quantize(w: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes, two 4-bit codes per byte; fp32 absmax per block) — 0.5 + 4/block bytes per value."""
    book = torch.tensor(NF4, device=w.device)
    codes, absmax = quantize(w, book, block)
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] << 4 | flat[1::2]).contiguous(), absmax


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, dtype: torch.dtype,
                   block: int = 64) -> torch.Tensor:
    book = torch.tensor(NF4, device=packed.device)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[: shape.numel()]
    return dequantize(codes.view(shape), absmax, book, block).to(dtype)
