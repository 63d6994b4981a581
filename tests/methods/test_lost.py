"""LOST against its rule: B A is the best rank-r approximation of the initial weight (truncated SVD), S holds the
⌈δ·in⌉ columns of largest norm of the remainder W₀ − B A (the other singular values), and y = B A x + S x_K; with every
channel kept the layer reproduces W₀ exactly."""
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import lost

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def test_split_by_singular_values_and_channels_of_largest_norm():
    torch.manual_seed(0)
    linear = torch.nn.Linear(20, 12, bias=False).double()
    w0 = linear.weight.detach().clone()
    layer = lost.LOSTLinear(linear, rank=3, density=0.25)
    u, s, vh = torch.linalg.svd(w0)
    torch.testing.assert_close(layer.b @ layer.a, u[:, :3] @ torch.diag(s[:3]) @ vh[:3])
    rest = w0 - u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    channels = sorted(rest.norm(dim=0).argsort(descending=True)[:5].tolist())
    assert layer.channels.tolist() == channels
    torch.testing.assert_close(layer.s, rest[:, channels])
    x = torch.randn(4, 20, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ (layer.b @ layer.a).T + x[:, channels] @ rest[:, channels].T)


def test_all_channels_reproduce_the_model_and_everything_trains():
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    batch = torch.randint(0, 97, (2, 9))
    before = model(input_ids=batch).logits
    model = lost.apply(model, parse(lost.Options, {"rank": 4, "density": 1.0 - 1e-9}, "m"), torch.device("cpu"))
    torch.testing.assert_close(model(input_ids=batch).logits, before)
    model(input_ids=batch, labels=batch).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(n.endswith("proj.weight") for n, _ in model.named_parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # FSDP2 shards no strided parameter
