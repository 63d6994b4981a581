"""AdamW with the step in backward (method adamw_layerwise, loop=layerwise): the gradients never all live at once —
the backward's live-tensor peak is lower than the standard loop's by more than half the gradients' bytes (a batch of
few tokens, so that gradients, not activations, set the peak). The update equals the standard loop's:
tests/methods/test_layerwise.py."""
import torch

from harness.models import build_model
from harness.parts import build_optimizer, loop_step
from harness.probes import LiveTensorProbe, PhaseProbe, model_tensors, optimizer_state_tensors
from harness.schema import LlamaSpec, MethodSpec

SPEC = LlamaSpec(name="t", family="llama", hidden_size=64, intermediate_size=172, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def _backward_peak(loop: str) -> tuple[int, int]:
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float32, torch.device("cpu"))
    method = MethodSpec(name="m", optimizer={"name": "adamw", "lr": 1e-3}, transforms=(), loop=loop)
    opt = build_optimizer(method, model, torch.device("cpu"))
    batch = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(1))  # activations << gradients
    step = loop_step(method)
    step(model, opt, batch, PhaseProbe(torch.device("cpu"), model, None).phase)  # states exist from here on
    live = LiveTensorProbe()
    live.register(model_tensors(model) + optimizer_state_tensors(opt) + [batch])
    probe = PhaseProbe(torch.device("cpu"), model, live)
    with live:
        step(model, opt, batch, probe.phase)
    return probe.record["live_peak_backward"], sum(p.numel() * 4 for p in model.parameters())


def test_step_in_backward_lowers_the_backward_peak_by_the_gradients():
    standard, grad_bytes = _backward_peak("standard")
    layerwise, _ = _backward_peak("layerwise")
    # what is left: one gradient and the temporaries of its AdamW step at a time
    assert standard - layerwise > 0.5 * grad_bytes, (standard, layerwise, grad_bytes)
