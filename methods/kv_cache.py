"""What the KV-cache methods share: the full cache (the baseline), the attention dispatch that lets a cache layer
compute its own attention, prompts prefilled in micro-batches and joined, and RoPE re-rotation.

A cache method module (methods.CACHES) has an `Options` dataclass and `build(model, options, max_tokens) -> Cache`
(a transformers `Cache`; `max_tokens` is the longest sequence it will hold, for caches that reserve their storage).
A layer that must see the query (KIVI's fused decode kernel, H2O's attention scores) has an
`attend(module, query, key, value, mask, scaling) -> (output (B, q, H, D), None)` method; `bind` routes the model's
attention through `cache_attention`, which calls it where a layer has one and transformers' SDPA elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from methods.options import Ranged

ATTENTION = "membench_cache"  # the attention implementation registered for caches with their own attention
# attributes holding one value for the whole batch, or rebuilt after a join (KIVI's views): not joined
UNBATCHED = ("positions", "rotary", "views")


@dataclass(frozen=True)
class Options(Ranged):
    """The full cache has no options."""


def build(model, options: Options, max_tokens: int) -> Cache:
    """The baseline: transformers' DynamicCache, every key and value kept in the model's dtype."""
    return DynamicCache(config=model.config)


def cache_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cache = getattr(module, "kv_cache", None)
    layer = cache.layers[module.layer_idx] if cache is not None and module.layer_idx < len(cache.layers) else None
    if not hasattr(layer, "attend"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    return layer.attend(module, query, key, value, attention_mask, scaling)


def _register_attention() -> None:
    """Registered on first use, not at import: transformers.modeling_utils imports its quantizers (torchao among
    them), which planning, which imports every method, should not pay for or hear from."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(ATTENTION, cache_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def attention_modules(model) -> list[torch.nn.Module]:
    """The modules that call the attention interface (they carry a layer_idx and the model's config)."""
    return [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int) and hasattr(m, "config")]


def bind(model, cache: Cache | None) -> None:
    """Route attention through `cache_attention` with `cache` (None: back to SDPA, nothing bound)."""
    _register_attention()
    for module in attention_modules(model):
        module.kv_cache = cache
    model.set_attn_implementation(ATTENTION if cache is not None else "sdpa")


def sdpa(query, key, value, scaling, causal_offset: int | None) -> torch.Tensor:
    """Attention in (B, q, H, D) layout; causal_offset: query i sees keys up to offset + i (None: all keys)."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    mask = None
    if causal_offset is not None and query.shape[2] > 1:
        q_pos = torch.arange(query.shape[2], device=query.device)[:, None] + causal_offset
        mask = torch.arange(key.shape[2], device=query.device)[None, :] <= q_pos
    out = torch.nn.functional.scaled_dot_product_attention(query, key.to(query.dtype), value.to(query.dtype),
                                                           attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def rotary_embedding(model) -> torch.nn.Module | None:
    """The model's rotary embedding module, holding `inv_freq` (None for a model without RoPE)."""
    return next((m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)), None)


def rotate(keys: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys rotated by RoPE as if their positions moved by `shift` (T,): R(p + s) k = R(s) R(p) k, in fp32 from the
    stored keys each time (never rotated in place, so rounding does not accumulate)."""
    angles = shift.float()[:, None] * inv_freq.float()[None, :]
    cos, sin = torch.cat([angles, angles], dim=-1).cos(), torch.cat([angles, angles], dim=-1).sin()
    k = keys.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated_half * sin).to(keys.dtype)


def _join(values: list):
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values, dim=0) if first.dim() else first
    if isinstance(first, dict):
        return {k: _join([v[k] for v in values]) for k in first}
    if hasattr(first, "__dict__") and not isinstance(first, (type, torch.device, torch.dtype, torch.nn.Module)):
        for name in vars(first):
            if name not in UNBATCHED:
                setattr(first, name, _join([vars(v)[name] for v in values]))
        return first
    return first


def join_batches(caches: list[Cache]) -> Cache:
    """One cache holding the sequences of `caches` (each from one micro-batch of the prompts, all of one length) in
    order: every batched tensor of every layer joined along dim 0, layer by layer, each part dropped once joined, so
    the peak is the joined cache plus one layer."""
    if len(caches) == 1:
        return caches[0]
    first = caches[0]
    for i, layer in enumerate(first.layers):
        parts = [c.layers[i] for c in caches]
        for name in vars(layer):
            if name not in UNBATCHED:
                setattr(layer, name, _join([vars(p)[name] for p in parts]))
        if hasattr(layer, "joined"):
            layer.joined()
        for c in caches[1:]:
            c.layers[i] = None
    return first
