"""StreamingLLM's cache: the first `sinks` tokens stay whatever the length, the newest `window` with them, and every
kept key is re-rotated to its index in the cache (R(i − p) R(p) k = R(i) k)."""
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from methods import sink_window_cache
from methods.kv_cache import rotary_embedding
from tests.methods.kv_common import tiny_llama


def test_sinks_keep_the_first_tokens_and_the_window_the_newest():
    layer = sink_window_cache.SinkWindowLayer(sinks=4, window=8, rotary=None)
    for i in range(30):  # value channel 0 holds the token's index
        assert layer.get_seq_length() == min(i, 11)  # positions are indices in the cache
        value = torch.full((1, 2, 1, 4), float(i))
        layer.update(torch.randn(1, 2, 1, 4), value)
    kept = layer.values[0, 0, :, 0].tolist()
    assert kept == [0, 1, 2, 3] + list(range(22, 30))


def test_a_prompt_longer_than_the_cache_attends_to_itself_then_keeps_sinks_and_window():
    layer = sink_window_cache.SinkWindowLayer(sinks=2, window=5, rotary=None)
    values = torch.arange(20.0).view(1, 1, 20, 1)
    keys, out_values = layer.update(torch.randn(1, 1, 20, 1), values)
    assert out_values.shape[2] == 20
    assert layer.values[0, 0, :, 0].tolist() == [0, 1, 15, 16, 17, 18, 19]


def test_kept_keys_are_rotated_to_their_positions_in_the_cache():
    model = tiny_llama()
    rotary = rotary_embedding(model)
    layer = sink_window_cache.SinkWindowLayer(sinks=1, window=3, rotary=rotary)
    raw = torch.randn(1, 4, 9, 16)  # keys before RoPE
    for i in range(9):
        position = layer.get_seq_length()
        cos, sin = rotary(raw, torch.tensor([[position]]))
        _, rotated = apply_rotary_pos_emb(raw[:, :, i:i + 1], raw[:, :, i:i + 1], cos, sin)
        keys, _ = layer.update(rotated, rotated)
    kept_raw = raw[:, :, [0, 6, 7, 8]]  # the sink, then the window
    cos, sin = rotary(raw, torch.arange(4)[None])
    _, expected = apply_rotary_pos_emb(kept_raw, kept_raw, cos, sin)
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)
