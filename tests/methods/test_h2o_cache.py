"""H2O keeps, per head, the newest `recent` tokens and the `heavy` older ones with the largest accumulated
attention, which the test sets up: the query direction is aligned with the keys of chosen tokens."""
import torch

from methods import h2o_cache
from tests.methods.kv_common import tiny_llama


def test_h2o_keeps_the_heaviest_tokens_and_the_recent_ones():
    module = tiny_llama(heads=2, head_dim=8).model.layers[0].self_attn
    layer = h2o_cache.H2OLayer(heavy=2, recent=2)
    keys = torch.zeros(1, 2, 12, 8)
    keys[0, 0, [3, 7], 0] = 8.0  # head 0: tokens 3 and 7 draw the attention
    keys[0, 1, [1, 5], 1] = 8.0  # head 1: tokens 1 and 5
    values = torch.arange(12.0).view(1, 1, 12, 1).expand(1, 2, 12, 8).clone()
    query = torch.zeros(1, 2, 12, 8)
    query[0, 0, :, 0] = query[0, 1, :, 1] = 1.0
    k, v = layer.update(keys, values)
    layer.attend(module, query, k, v, None, 1.0)
    assert layer.values[0, 0, :, 0].tolist() == [3, 7, 10, 11]
    assert layer.values[0, 1, :, 0].tolist() == [1, 5, 10, 11]
    assert layer.get_seq_length() == 12 and layer.get_mask_sizes(1) == (5, 0)
    for _ in range(3):  # decoding keeps the budget
        k, v = layer.update(torch.zeros(1, 2, 1, 8), torch.full((1, 2, 1, 8), 99.0))
        layer.attend(module, query[:, :, :1], k, v, None, 1.0)
    assert layer.keys.shape[2] == 4 and layer.values[0, 0, :2, 0].tolist() == [3, 7]


def test_attention_output_is_softmax_attention_before_eviction():
    module = tiny_llama(heads=2, head_dim=8).model.layers[0].self_attn
    layer = h2o_cache.H2OLayer(heavy=100, recent=100)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    layer.update(k, v)
    out, _ = layer.attend(module, q, k, v, None, 8**-0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(layer.scores.sum(-1), torch.full((1, 2), 5.0))  # each query's probabilities sum to 1
