"""Low-Rank factorized training against its rule: y = B A x with both factors trained and no full-rank weight left,
B A starting as the best rank-r approximation of the layer's random init (truncated SVD), everything else trainable."""
import pytest
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import factorized

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def _model():
    torch.manual_seed(0)
    return build_model(SPEC, torch.float64, torch.device("cpu"))


def _apply(model, **options):
    return factorized.apply(model, parse(factorized.Options, options, "m"), torch.device("cpu"))


def test_a_layer_is_b_a_x_with_both_factors_trained_and_no_full_weight():
    model = _apply(_model(), rank=4)
    layer = model.model.layers[0].mlp.down_proj
    assert layer.b.shape == (32, 4) and layer.a.shape == (4, 86) and not hasattr(layer, "weight")
    x = torch.randn(3, 5, 86, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ (layer.b @ layer.a).T)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters()}  # embeddings, norms, head and factors all train
    assert not any(n.endswith("proj.weight") for n in names) and "lm_head.weight" in names
    assert sum(n.endswith((".a", ".b")) for n in names) == 2 * 7 * SPEC.num_hidden_layers
    assert all(p.is_contiguous() for p in model.parameters())  # FSDP2 shards no strided parameter


def test_factors_start_as_the_truncated_svd_of_the_random_init():
    base = _model()
    w0 = base.model.layers[1].self_attn.q_proj.weight.detach().clone()
    layer = _apply(base, rank=5).model.layers[1].self_attn.q_proj
    u, s, vh = torch.linalg.svd(w0)
    torch.testing.assert_close(layer.b @ layer.a, u[:, :5] @ torch.diag(s[:5]) @ vh[:5])


def test_full_rank_factors_reproduce_the_model():
    base = _model()
    batch = torch.randint(0, 97, (2, 9))
    before = base(input_ids=batch).logits
    torch.testing.assert_close(_apply(base, rank=32)(input_ids=batch).logits, before)


def test_rank_larger_than_a_layer_is_refused():
    with pytest.raises(ValueError, match="exceeds a target layer"):
        _apply(_model(), rank=33)
