"""INT8 weights (the weight half of Q-GaLore, Zhang et al., "Q-GaLore: Quantized GaLore with INT4 Projection and
Layer-Adaptive Low-Rank Gradients", 2024) as a model transform.

Each attention / MLP linear layer keeps W only as int8 codes with one fp32 scale per group of `group_size` input
features (symmetric: W ≈ s · q, s = absmax / 127): 1 + 4/group bytes per weight instead of 2 (bf16). The forward
pass dequantizes W transiently; backward computes ∂L/∂x and ∂L/∂W = dyᵀ x and hands ∂L/∂W to the optimizer's rule
(attached by the optimizer: methods/lowrank.ProjectedAdamW.attach_quantized), which updates W at once,
    W ← W(1 − lr λ) − lr · update,   q ← SR(W / s')   (s' recomputed; SR = stochastic rounding, unbiased),
so no full-precision weight or gradient outlives its layer's backward. Stochastic rounding keeps updates much
smaller than one quantization step from vanishing on average.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from methods.lora import REPLACES, replace_linears, target_shapes  # noqa: F401  (LoRA's targets)
from methods.options import COUNT, NAMES, SEED, Ranged

CHUNK_VALUES = 2**22  # weight values per fp32 working chunk (row_chunks)


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"group_size": COUNT, "targets": NAMES, "seed": SEED}

    group_size: int = 256
    stochastic_rounding: bool = True
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])
    seed: int = 0


def quantize_int8(w: torch.Tensor, group: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp32 scale per (row, group of `group` columns)); stochastic rounding when a generator is given."""
    rows, cols = w.shape
    blocks = w.float().reshape(rows, cols // group, group)
    scale = (blocks.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12)
    scaled = blocks / scale
    if generator is not None:
        scaled = torch.floor(scaled + torch.rand(scaled.shape, generator=generator, device=w.device))
    else:
        scaled = scaled.round()
    return scaled.clamp_(-127, 127).to(torch.int8).reshape(rows, cols), scale.squeeze(-1)


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    rows, cols = codes.shape
    return (codes.float().reshape(rows, cols // group, group) * scale.unsqueeze(-1)).reshape(rows, cols)


def row_chunks(rows: int, cols: int) -> Iterator[slice]:
    """Row ranges of about CHUNK_VALUES values: the fp32 working copies of a layer's weight are made a chunk at a
    time (a 4096 × 11008 weight in fp32 is 180 MB; the update's rounding would hold four such at once)."""
    step = max(1, CHUNK_VALUES // cols)
    return (slice(start, start + step) for start in range(0, rows, step))


class _Int8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return x @ layer.weight().T

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_out @ layer.weight()
        if layer.updater is not None:
            # in the activations' dtype, as an nn.Linear's weight gradient would be (bf16: half an fp32 one)
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])
            layer.updater(grad_w)
        return grad_x, None


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, options: Options, generator: torch.Generator):
        super().__init__()
        out_features, in_features = linear.weight.shape
        self.group = options.group_size if in_features % options.group_size == 0 else in_features
        self.dtype, self.bias = linear.weight.dtype, linear.bias
        self.generator = generator if options.stochastic_rounding else None
        codes, scale = quantize_int8(linear.weight.detach(), self.group, None)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.updater = None  # set by the optimizer; without one the layer is frozen

    def weight(self) -> torch.Tensor:
        """W in the layer's dtype, each value rounded once from its fp32 dequantization."""
        out = torch.empty(self.codes.shape, dtype=self.dtype, device=self.codes.device)
        for rows in row_chunks(*self.codes.shape):
            out[rows] = dequantize_int8(self.codes[rows], self.scale[rows], self.group)
        return out

    @torch.no_grad()
    def apply_update(self, update: torch.Tensor, lr: float, weight_decay: float) -> None:
        for rows in row_chunks(*self.codes.shape):
            w = dequantize_int8(self.codes[rows], self.scale[rows], self.group)
            if weight_decay:
                w.mul_(1 - lr * weight_decay)
            w.add_(update[rows], alpha=-lr)
            codes, scale = quantize_int8(w, self.group, self.generator)
            self.codes[rows] = codes  # in place: the optimizer's state is keyed by this tensor
            self.scale[rows] = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Int8Matmul.apply(x, self)
        return y if self.bias is None else y + self.bias


def check(options: Options, model_spec) -> None:
    """Plan-time: every target names a linear layer of the model (a group size that does not divide a layer's input
    features falls back to one group per row)."""
    target_shapes(options.targets, model_spec)


STREAMED_LOAD = True  # apply takes `layers`: a checkpoint is quantized layer by layer as it loads


def apply(model: nn.Module, options: Options, device: torch.device, layers=None) -> nn.Module:
    """Quantize the target layers of `model`, or of each module `layers` yields in turn (an iterator may load each
    one just before it is quantized, so the full-precision model never exists at once)."""
    generator = torch.Generator(device=device).manual_seed(options.seed)
    make = lambda linear: Int8Linear(linear, options, generator)  # noqa: E731
    if sum(replace_linears(unit, set(options.targets), make) for unit in (layers or [model])) == 0:
        raise ValueError(f"int8_weights found no nn.Linear named {options.targets} in {type(model).__name__}")
    return model
