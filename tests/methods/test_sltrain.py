"""SLTrain against its rule: y = x ((α/r) B A + S)ᵀ + bias, S on a fixed random support of ⌊δ·out·in⌋ entries;
B, A and S's values are the only trained tensors of a layer, the custom backward equals autograd on the dense
formula, and an optimizer step moves the values but never the support."""
import pytest
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import sltrain

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def _layer(rank=3, density=0.3, alpha=4.0, bias=True):
    torch.manual_seed(0)
    linear = torch.nn.Linear(11, 7, bias=bias).double()
    layer = sltrain.SLTrainLinear(linear, rank, density, alpha, torch.Generator().manual_seed(1))
    torch.nn.init.normal_(layer.lora_b)  # B starts at zero (the authors' init); a non-zero B tests the product
    return layer


def test_layer_is_scaled_low_rank_plus_sparse_on_a_fixed_support():
    layer = _layer()
    assert layer.values.numel() == int(0.3 * 7 * 11) == layer.support.numel()
    s = torch.zeros(7 * 11, dtype=torch.float64)
    s[layer.support.long()] = layer.values.detach()
    weight = (4.0 / 3) * layer.lora_b @ layer.lora_a + s.view(7, 11)
    x = torch.randn(2, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias)
    assert {n for n, _ in layer.named_parameters()} == {"lora_a", "lora_b", "values", "bias"}


def test_backward_equals_autograd_on_the_dense_formula():
    layer = _layer()
    x = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(layer(x).square().sum(), [x, layer.lora_b, layer.lora_a, layer.values, layer.bias])
    s = torch.zeros(7 * 11, dtype=torch.float64).index_put((layer.support.long(),), layer.values)
    plain = x @ ((4.0 / 3) * layer.lora_b @ layer.lora_a + s.view(7, 11)).T + layer.bias
    expected = torch.autograd.grad(plain.square().sum(), [x, layer.lora_b, layer.lora_a, layer.values, layer.bias])
    for ours, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_init_as_the_authors_and_the_support_never_moves():
    layer = sltrain.SLTrainLinear(torch.nn.Linear(64, 48), 4, 0.05, 8.0, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(layer.lora_b) == 0 and layer.values.abs().max() <= 64 ** -0.5
    assert torch.equal(layer.support, layer.support.unique())  # distinct positions, sorted
    support = layer.support.clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    for _ in range(3):
        layer(torch.randn(8, 64)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(layer.support, support) and torch.count_nonzero(layer.lora_b) > 0


def test_model_transform_trains_factors_values_and_the_rest():
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    dense = sum(p.numel() for p in model.parameters())
    model = sltrain.apply(model, parse(sltrain.Options, {"rank": 4, "density": 0.05}, "m"), torch.device("cpu"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("proj.weight") for n in names) and "lm_head.weight" in names
    assert sum(p.numel() for p in model.parameters()) < dense
    batch = torch.randint(0, 97, (2, 9))
    model(input_ids=batch, labels=batch).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_rank_larger_than_a_layer_is_refused():
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    with pytest.raises(ValueError, match="exceeds a target layer"):
        sltrain.apply(model, parse(sltrain.Options, {"rank": 33}, "m"), torch.device("cpu"))
