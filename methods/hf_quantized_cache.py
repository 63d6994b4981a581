"""transformers' own quantized caches as reference methods (`transformers.QuantizedCache`): backend quanto (package
optimum-quanto) or hqq (package hqq), b-bit group-wise codes with a full-precision residual of the newest tokens, in
the KIVI paper's spirit but quantizing keys and values along the same axis; or fp8 (built in: per-tensor fp8
scaling, no residual). A backend whose package is absent gives a `skipped` row. Each decode step dequantizes the
whole cache into a full-precision copy for SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import transformers
from transformers import Cache, QuantizedCache

from methods.options import COUNT, Ranged, Rule

PACKAGES = {"quanto": "optimum.quanto", "hqq": "hqq", "fp8": None}
NBITS = Rule("2, 4 or 8 (quanto: 2 or 4)", lambda v: v in (2, 4, 8))


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"nbits": NBITS, "q_group_size": COUNT, "residual_length": COUNT}

    backend: Literal["quanto", "hqq", "fp8"] = "quanto"
    nbits: int = 2
    q_group_size: int = 64
    residual_length: int = 128


def build(model, options: Options, max_tokens: int) -> Cache:
    from methods import require

    if PACKAGES[options.backend]:
        require(PACKAGES[options.backend], f"QuantizedCache(backend={options.backend})")
        cache = QuantizedCache(options.backend, model.config, nbits=options.nbits, q_group_size=options.q_group_size,
                               residual_length=options.residual_length)
    else:
        try:
            cache = QuantizedCache(options.backend, model.config)
        except ValueError as e:  # an older transformers (5.17 has quanto and hqq only)
            from methods import MissingRequirement

            raise MissingRequirement(f"QuantizedCache(backend={options.backend}): {e} (transformers "
                                     f"{transformers.__version__})") from None
    cache.joinable = False  # quantized state per tensor (fp8's one scale) or in the backend's objects
    return cache
