"""KIVI KV cache (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024) as a
transformers `Cache`, on our kernels (kernels/kivi.py): keys quantized per channel over groups of G tokens, values
per token over groups of G channels, asymmetric b-bit codes with an fp16 scale and zero per group, the not-yet-full
group of the newest tokens kept in fp16 (the residual). x̂ = s·q + z with s = (max − min)/(2^b − 1), so every
cached value is within s/2 of the original. Bytes per element about b/8 + 4/G, against 2 in bf16.

The prompt attends to its own keys and values in full precision (as in the paper); each decoded token's query
attends through the fused dequantize-attention kernel (`kivi_decode_attention`: Triton on CUDA, a plain-torch path
over the dequantized cache elsewhere), so no bf16 copy of the cache is ever built while decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

from membench_kernels.kivi import KIVICache, kivi_decode_attention
from methods.kv_cache import sdpa
from methods.options import COUNT, Ranged, Rule

BITS = Rule("2 or 4", lambda v: v in (2, 4))


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"bits": BITS, "group": COUNT}

    bits: int = 2
    group: int = 128  # G: tokens per key group, channels per value group (the residual holds < G tokens)


class KIVILayer(CacheLayerMixin):
    is_sliding = False

    def __init__(self, bits: int, group: int, reserve_tokens: int):
        super().__init__()
        self.kivi = KIVICache(bits=bits, group=group, value_group=group, reserve_tokens=reserve_tokens)
        self.seen = 0  # tokens cached
        self.before = 0  # tokens cached before the latest update (0: the latest update was the prompt)

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.before = self.seen
        self.kivi.append(key_states, value_states)
        self.seen += key_states.shape[-2]
        return key_states, value_states

    def attend(self, module, query, key, value, mask, scaling):
        if self.before == 0:  # the prompt: its own keys and values, unquantized
            return sdpa(query, key, value, scaling, causal_offset=0), None
        b, h, q, d = query.shape
        if q == 1 and h == key.shape[1] and abs(scaling - d**-0.5) < 1e-12:
            return kivi_decode_attention(query[:, :, 0], self.kivi)[:, None], None
        # several queries, grouped heads or another scale: the same math over the dequantized cache
        keys, values = self.kivi.dequantized()
        return sdpa(query.float(), keys, values, scaling, causal_offset=self.before).to(query.dtype), None

    def joined(self) -> None:
        self.kivi.views = None  # views of the parts' buffers, not of the joined ones

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1


def build(model, options: Options, max_tokens: int) -> Cache:
    layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[KIVILayer(options.bits, options.group, max_tokens) for _ in range(layers)])
