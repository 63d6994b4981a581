"""H2O, heavy-hitter eviction (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models", NeurIPS 2023): each head keeps the `recent` newest tokens and the `heavy` older tokens with the
largest accumulated attention, A_j = Σ_i softmax(q_i Kᵀ/√d)_j summed over every query i that has attended so far;
the rest are evicted (per head, so heads keep different tokens). Cache size ≤ heavy + recent per head.

The layer computes its own attention (eager, in fp32, queries in chunks so that a long prompt's score matrix is
never whole) to read the attention probabilities; keys keep the positions they were rotated at, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv

from methods.options import COUNT, NON_NEGATIVE, Ranged

QUERY_CHUNK = 256  # queries whose score rows exist at once (a 4096-token prompt: 16 chunks)


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"heavy": NON_NEGATIVE, "recent": COUNT}

    heavy: int = 256
    recent: int = 256


class H2OLayer(DynamicLayer):
    def __init__(self, heavy: int, recent: int):
        super().__init__()
        self.heavy, self.recent = heavy, recent
        self.scores = None  # (B, H_kv, T) accumulated attention of each cached token, fp32
        self.seen = 0  # tokens seen: the next token's position (keys keep their original positions)
        self.before = 0

    def update(self, key_states, value_states, *args, **kwargs):
        self.before = 0 if not self.is_initialized else self.keys.shape[-2]
        keys, values = super().update(key_states, value_states)
        fresh = key_states.new_zeros(key_states.shape[:2] + key_states.shape[2:3], dtype=torch.float32)
        self.scores = fresh if self.scores is None else torch.cat([self.scores, fresh], dim=-1)
        self.seen += key_states.shape[-2]
        return keys, values

    def attend(self, module, query, key, value, mask, scaling):
        b, h, q, _ = query.shape
        groups = h // key.shape[1]
        k, v = repeat_kv(key, groups).float(), repeat_kv(value, groups).float()
        outputs, received = [], torch.zeros(b, h, key.shape[2], device=query.device)
        for start in range(0, q, QUERY_CHUNK):
            chunk = query[:, :, start:start + QUERY_CHUNK].float()
            logits = chunk @ k.transpose(-1, -2) * scaling
            q_pos = torch.arange(start, start + chunk.shape[2], device=query.device)[:, None] + self.before
            logits = logits.masked_fill(torch.arange(key.shape[2], device=query.device)[None, :] > q_pos,
                                        float("-inf"))
            probs = logits.softmax(dim=-1)
            received += probs.sum(dim=2)
            outputs.append(probs @ v)
        self.scores += received.view(b, h // groups, groups, -1).sum(dim=2)
        self._evict()
        return torch.cat(outputs, dim=2).to(query.dtype).transpose(1, 2).contiguous(), None

    def _evict(self) -> None:
        """Per head: the `recent` newest tokens and the `heavy` highest-scoring older ones stay, in their order."""
        t = self.keys.shape[-2]
        if t <= self.heavy + self.recent:
            return
        older = self.scores[..., : t - self.recent]
        top = older.topk(self.heavy, dim=-1).indices.sort(dim=-1).values if self.heavy else older[..., :0].long()
        recent = torch.arange(t - self.recent, t, device=top.device).expand(*top.shape[:2], self.recent)
        keep = torch.cat([top, recent], dim=-1)
        self.scores = self.scores.gather(-1, keep)
        index = keep[..., None].expand(-1, -1, -1, self.keys.shape[-1])
        self.keys, self.values = self.keys.gather(2, index), self.values.gather(2, index)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = 0 if not self.is_initialized else self.keys.shape[-2]
        return kept + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen


def build(model, options: Options, max_tokens: int) -> Cache:
    layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[H2OLayer(options.heavy, options.recent) for _ in range(layers)])
