"""Blockwise 8-bit quantization of optimizer state (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022): a tensor is cut into blocks of `block` values; each block stores its absmax in fp32 and
every value as the index (uint8) of the nearest entry of a fixed 256-entry code book of values in [-1, 1].

The code book is the dynamic-tree map: for exponents 10^-6 … 10^0, a growing number of linearly spaced fractions in
(0.1, 1), so small magnitudes keep relative precision (signed: 127 positive, 127 negative, 0 and 1; unsigned, for
the second moment: 254 positive, 0 and 1). Bytes per value: 1 + 4/block.
"""
from __future__ import annotations

from functools import lru_cache

import torch

BLOCK = 256


@lru_cache(maxsize=None)
def _dynamic_map_cpu(signed: bool) -> torch.Tensor:
    values = [0.0, 1.0]
    for i in range(7):
        count = 2**i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1.0, count + 1, dtype=torch.float64)
        means = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += means + ([-v for v in means] if signed else [])
    table = torch.tensor(sorted(values), dtype=torch.float32)
    assert table.numel() == 256
    return table


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    return _dynamic_map_cpu(signed).to(device)


def midpoints(code_book: torch.Tensor) -> torch.Tensor:
    return (code_book[1:] + code_book[:-1]) / 2


def quantize(x: torch.Tensor, code_book: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 shaped like x, absmax fp32 per block) — nearest code-book entry of x / absmax(block)."""
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1)
    normalized = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(1)
    codes = torch.bucketize(normalized, midpoints(code_book)).to(torch.uint8)
    return codes.view(-1)[: flat.numel()].view(x.shape), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, code_book: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    flat = code_book[codes.reshape(-1).long()]
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block) * absmax.unsqueeze(1)
    return blocks.view(-1)[: flat.numel()].view(codes.shape)
