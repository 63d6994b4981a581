"""APOLLO-Mini on INT8 weights: the INT8 layers are updated from their backward (no gradient is kept), the model
trains, and the optimizer state of an INT8 matrix is the rank-1 moments only."""
import pytest
import torch

from harness.models import build_model
from harness.parts import apply_transforms, build_optimizer
from harness.schema import LlamaSpec, MethodSpec
from methods.int8_weights import Int8Linear

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=50, max_position_embeddings=32)


@pytest.mark.parametrize("loop", ["standard", "layerwise"])
def test_apollo_mini_on_int8_weights_trains(loop):
    torch.manual_seed(0)
    method = MethodSpec(name="m", optimizer={"name": "apollo_mini", "lr": 1e-2}, transforms=("int8_weights",),
                        transform_options={"int8_weights": {"group_size": 32}}, loop=loop)
    model = apply_transforms(method, build_model(SPEC, torch.float32, torch.device("cpu")), torch.device("cpu"))
    opt = build_optimizer(method, model, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 7 * SPEC.num_hidden_layers
    batch = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    before = [layer.codes.clone() for layer in layers]
    losses = []
    for _ in range(30):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()  # layer-wise: embeddings, head and norms are updated here too
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, layer.codes) for b, layer in zip(before, layers, strict=True))
    state = opt.state[layers[0].codes]
    assert min(state["exp_avg"].shape) == 1
