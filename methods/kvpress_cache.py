"""kvpress (NVIDIA, github.com/NVIDIA/kvpress) presses as reference methods: a press prunes the prompt's KV cache
once, right after the prefill, keeping (1 − compression_ratio) of the tokens by its score (snapkv: attention of the
prompt's last queries, Li et al. 2024; knorm: smallest key norms, Devoto et al. 2024; streaming_llm: sinks + newest;
expected_attention: kvpress's own); decoding then appends to a plain DynamicCache. Without the package the row is
`skipped`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import Cache, DynamicCache

from methods.options import Ranged, Rule

PRESSES = {"snapkv": "SnapKVPress", "knorm": "KnormPress", "streaming_llm": "StreamingLLMPress",
           "expected_attention": "ExpectedAttentionPress"}
RATIO = Rule("in [0, 1)", lambda v: isinstance(v, (int, float)) and 0 <= v < 1)


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"compression_ratio": RATIO}

    press: Literal["snapkv", "knorm", "streaming_llm", "expected_attention"] = "snapkv"
    compression_ratio: float = 0.5


def build(model, options: Options, max_tokens: int) -> Cache:
    from methods import require

    kvpress = require("kvpress", f"kvpress's {PRESSES[options.press]}")
    cache = DynamicCache(config=model.config)
    cache.prefill_context = getattr(kvpress, PRESSES[options.press])(compression_ratio=options.compression_ratio)
    cache.joinable = False  # a press may keep a different number of tokens per micro-batch
    return cache
