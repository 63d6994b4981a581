"""Attention sinks + sliding window (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
ICLR 2024, StreamingLLM): the cache keeps the first `sinks` tokens and the newest `window` tokens, nothing else, so
its size is bounded by sinks + window whatever the text's length. sinks = 0 is plain window attention, the
paper's failing baseline (its perplexity blows up once the first tokens leave the window).

Positions are those within the cache, as in the paper: the next token gets position min(cached, capacity − 1), and
at each step every cached key is re-rotated by RoPE to its index in the cache (R(i − p) applied to a key stored at
position p, computed from the stored key each time, so rounding never accumulates). Decoding is one token at a
time; a prompt longer than the cache attends to itself in full, then only sinks + window of it stay.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from methods.kv_cache import rotary_embedding, rotate
from methods.options import COUNT, NON_NEGATIVE, Ranged


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"sinks": NON_NEGATIVE, "window": COUNT}

    sinks: int = 4  # the paper's 4 initial tokens
    window: int = 1020  # recent tokens (the paper's cache of 1024 = 4 sinks + 1020)


class SinkWindowLayer(DynamicLayer):
    def __init__(self, sinks: int, window: int, rotary: torch.nn.Module | None):
        super().__init__()
        self.sinks, self.capacity, self.rotary = sinks, sinks + window, rotary  # a module: not counted as cache
        self.positions = None  # (T,) the position each cached key was rotated at, one for the whole batch
        self.moved = False  # whether a kept key has left the position it was rotated at (a token was evicted)

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        start = self.get_seq_length()  # the positions the model gave the new tokens
        new_positions = torch.arange(start, start + new, device=key_states.device)
        if not self.is_initialized or self.keys.shape[-2] == 0:  # the prompt attends to all of itself
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values, self.positions = key_states, value_states, new_positions
            self._evict()
            return key_states, value_states
        if new != 1:
            raise ValueError("sink_window decodes one token at a time after the prompt")
        self._evict(room=new)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, new_positions])
        return self._keys_in_cache_positions(), self.values

    def _evict(self, room: int = 0) -> None:
        """Drop the oldest non-sink tokens until `room` more fit (the evicted storage is freed: clone)."""
        excess = self.keys.shape[-2] + room - self.capacity
        if excess > 0:
            keep = torch.cat([torch.arange(self.sinks, device=self.keys.device),
                              torch.arange(self.sinks + excess, self.keys.shape[-2], device=self.keys.device)])
            self.keys = self.keys.index_select(-2, keep)
            self.values = self.values.index_select(-2, keep)
            self.positions = self.positions[keep]
            self.moved = True

    def _keys_in_cache_positions(self) -> torch.Tensor:
        if self.rotary is None or not self.moved:
            return self.keys
        shift = torch.arange(self.keys.shape[-2], device=self.keys.device) - self.positions
        return rotate(self.keys, shift, self.rotary.inv_freq)

    def get_seq_length(self) -> int:
        stored = 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]
        return min(stored, self.capacity - 1)


def build(model, options: Options, max_tokens: int) -> Cache:
    layers = model.config.get_text_config().num_hidden_layers
    rotary = rotary_embedding(model)
    return Cache(layers=[SinkWindowLayer(options.sinks, options.window, rotary) for _ in range(layers)])
