"""The layer-wise update loop: the same parameters as the standard loop (per-parameter optimizers do the same math),
with every gradient freed during backward."""
import torch

from harness.models import build_model
from harness.parts import build_optimizer, loop_step
from harness.probes import no_phase as noop_phase
from harness.schema import LlamaSpec, MethodSpec

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def _train(loop: str, optimizer: dict, steps: int = 3):
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    method = MethodSpec(name="m", optimizer=optimizer, transforms=(), loop=loop)
    opt = build_optimizer(method, model, torch.device("cpu"))
    batch = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    grads_left = []
    for _ in range(steps):
        loop_step(method)(model, opt, batch, noop_phase)
        grads_left.append(sum(p.grad is not None for p in model.parameters()))
    return model, grads_left


def test_layerwise_equals_standard_and_frees_every_gradient():
    for optimizer in ({"name": "adamw", "lr": 1e-2}, {"name": "galore", "lr": 1e-2, "rank": 4, "update_gap": 2}):
        standard, _ = _train("standard", optimizer)
        layerwise, grads_left = _train("layerwise", optimizer)
        for a, b in zip(standard.parameters(), layerwise.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert grads_left == [0, 0, 0]
