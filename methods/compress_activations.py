"""8-bit activation compression in the spirit of Mesa (Pan et al., "Mesa: A Memory-saving Training Framework for
Transformers", 2021): every activation the decoder saves for the backward pass is kept as int8 codes with one scale
per channel (the last dimension, the features), and dequantized when the backward uses it:

    s_c = max |x[..., c]| / 127,   q = round(x / s_c) ∈ [−127, 127] (int8),   x̂ = q · s_c
so |x − x̂| ≤ s_c / 2 elementwise; kept bytes: 1 per element + 4 per channel, against 2 (bf16) or 4 (fp32).

The forward computation and the loss are exact; only what the backward reads is rounded, so gradients carry the
error. Unlike Mesa, which replaces the layers by its own with running per-head scales, the scales here are the exact
channel maxima of each tensor as it is saved, through saved-tensor hooks (methods/saved_activations.py: the decoder
only, each tensor once, parameters and tensors under `min_numel` elements kept as they are). It composes with
activation checkpointing: the layer inputs that checkpointing keeps are compressed too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.options import COUNT, Ranged
from methods.saved_activations import SavedTensorCodec, install

REPLACES = "the decoder's saved-tensor hooks"  # with offload_activations, only the inner hooks would act


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"min_numel": COUNT}

    min_numel: int = 4096  # smaller saved tensors stay as they are (their scales would cost more than they save)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of x and the fp32 scale of each channel (last dimension)."""
    x = x.detach()
    scale = x.abs().reshape(-1, x.shape[-1]).amax(0).float().clamp_min(torch.finfo(torch.float32).tiny) / 127
    return (x.float() / scale).round_().clamp_(-127, 127).to(torch.int8), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale).to(dtype)


class Int8Codec(SavedTensorCodec):
    def encode(self, t: torch.Tensor):
        return (*quantize(t), t.dtype)

    def decode(self, handle) -> torch.Tensor:
        return dequantize(*handle)


def apply(model: torch.nn.Module, options: Options, device: torch.device) -> torch.nn.Module:
    return install(model, Int8Codec(options.min_numel))
