"""Weight-only quantization for inference through bitsandbytes, as transforms composable with any cache method
(`method.transforms=[bnb_int8]` or `[bnb_nf4]`): the attention and MLP linear layers are replaced by bitsandbytes'
layers holding their weight in int8 (LLM.int8(), Dettmers et al., NeurIPS 2022: vector-wise absmax int8 with
outlier features above `threshold` computed in fp16; 1 byte a weight plus a scale per row) or NF4 (Dettmers et al.,
QLoRA, NeurIPS 2023: 4-bit NormalFloat codes, an absmax per block of 64; about 0.5 byte a weight). Frozen: inference
only. Needs CUDA and the bitsandbytes package (else the row is `skipped`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.lora import DEFAULT_TARGETS, REPLACES, replace_linears, target_shapes  # noqa: F401
from methods.options import NAMES, POSITIVE, Ranged

REQUIRES_CUDA = True
INFERENCE = True  # usable by scenario=generate


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"targets": NAMES, "threshold": POSITIVE}

    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    threshold: float = 6.0  # int8: outlier threshold of LLM.int8()


def check(options: Options, model_spec) -> None:
    target_shapes(options.targets, model_spec)


def quantized_linear(linear: nn.Linear, kind: str, options: Options, device: torch.device) -> nn.Module:
    from methods import require

    bnb = require("bitsandbytes", f"bnb_{kind} weights")
    weight = linear.weight.detach()
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=options.threshold)
        layer.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=weight.dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight.to("cpu"), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer.to(device)  # bitsandbytes quantizes on the move to the GPU


def apply_kind(model: nn.Module, kind: str, options: Options, device: torch.device) -> nn.Module:
    if replace_linears(model, set(options.targets), lambda lin: quantized_linear(lin, kind, options, device)) == 0:
        raise ValueError(f"bnb_{kind} found no nn.Linear named {options.targets} in {type(model).__name__}")
    return model
