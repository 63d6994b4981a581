"""QLoRA (Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023), native: the frozen base
weights of the LoRA target layers are stored in NF4 (4-bit NormalFloat codes, two per byte, fp32 absmax per block
of 64: 0.5625 bytes per weight instead of 2 in bf16) and dequantized to the compute dtype inside each forward;
LoRA adapters (methods/lora.py) train in the compute dtype. Double quantization of the absmax is not done.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from membench_kernels.quant import nf4_dequantize, nf4_quantize
from methods.lora import REPLACES, add_adapters, check  # noqa: F401  (LoRA's targets and checks)
from methods.lora import Options as LoRAOptions
from methods.options import COUNT


@dataclass(frozen=True)
class Options(LoRAOptions):
    RANGES = {"block_size": COUNT}

    block_size: int = 64


class _NF4Matmul(torch.autograd.Function):
    """y = x Wᵀ with W dequantized from NF4 in forward and again in backward: only the 4-bit codes are saved."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return x @ layer.weight().T

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out @ ctx.layer.weight(), None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives as NF4 codes; the weight exists in full precision only transiently."""

    def __init__(self, linear: nn.Linear, block: int):
        super().__init__()
        self.shape, self.dtype, self.block = linear.weight.shape, linear.weight.dtype, block
        codes, absmax = nf4_quantize(linear.weight.detach(), block)
        self.register_buffer("codes", codes)
        self.register_buffer("absmax", absmax)
        self.bias = linear.bias

    def weight(self) -> torch.Tensor:
        return nf4_dequantize(self.codes, self.absmax, self.shape, self.dtype, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4Matmul.apply(x, self)
        return y if self.bias is None else y + self.bias


STREAMED_LOAD = True  # apply takes `layers`: a checkpoint is quantized layer by layer as it loads


def apply(model: nn.Module, options: Options, device: torch.device, layers=None) -> nn.Module:
    """NF4 bases and LoRA adapters on the target layers of `model`, or of each module `layers` yields in turn (an
    iterator may load each one just before it is quantized); the model's other parameters are frozen either way."""
    make_base = lambda linear: NF4Linear(linear, options.block_size)  # noqa: E731
    if layers is None:
        return add_adapters(model, options, make_base=make_base)
    for p in model.parameters():
        p.requires_grad_(options.train_rest)
    for unit in layers:
        add_adapters(unit, options, make_base=make_base)
    return model
