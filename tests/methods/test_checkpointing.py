"""Checkpointing changes memory, not math: identical loss and gradients, fewer live activation bytes."""
import torch

from harness.models import build_model
from harness.schema import LlamaSpec
from methods import checkpointing
from tests.methods.common import saved_by_forward

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=3, vocab_size=97, max_position_embeddings=64)


def _forward_backward(use_checkpointing: bool):
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    if use_checkpointing:
        checkpointing.apply(model, None, torch.device("cpu"))
    model.train()
    batch = torch.randint(0, 97, (3, 37), generator=torch.Generator().manual_seed(1))
    loss, activations, _ = saved_by_forward(model, batch)
    return loss, [p.grad for p in model.parameters()], activations


def test_checkpointing_same_gradients_fewer_activations():
    loss_a, grads_a, act_a = _forward_backward(False)
    loss_b, grads_b, act_b = _forward_backward(True)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert act_b < 0.6 * act_a
