"""The fused_ce transform gives the model's own causal-LM loss and gradients, with fewer live bytes."""
import pytest
import torch

from harness.models import build_model
from harness.probes import LiveTensorProbe, model_tensors
from harness.schema import LlamaSpec, parse
from methods import cce_fused_ce, fused_ce, liger_fused_ce

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=997, max_position_embeddings=64)


def _loss_grads_bytes(mode: str | None):
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float64, torch.device("cpu"))
    if mode:
        fused_ce.apply(model, parse(fused_ce.Options, {"mode": mode}, "m"), torch.device("cpu"))
    batch = torch.randint(0, 997, (3, 21), generator=torch.Generator().manual_seed(1))
    probe = LiveTensorProbe()
    probe.register(model_tensors(model) + [batch])
    with probe:
        if mode:
            loss = model(input_ids=batch, labels=batch).loss
        else:  # the model's loss in float64 throughout (HF's own loss upcasts logits to float32 only)
            logits = model.lm_head(model.model(input_ids=batch).last_hidden_state)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 997), batch[:, 1:].reshape(-1))
        loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], probe.peak


@pytest.mark.parametrize("mode", ["memory", "speed"])
def test_fused_ce_equals_the_model_loss(mode):
    loss, grads, peak = _loss_grads_bytes(None)
    fused_loss, fused_grads, fused_peak = _loss_grads_bytes(mode)
    # the row kernel works in fp32 (the model here is fp64): agreement to fp32 rounding
    torch.testing.assert_close(fused_loss, loss, rtol=1e-6, atol=1e-9)
    for a, b in zip(fused_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    assert fused_peak < peak


@pytest.mark.gpu
@pytest.mark.parametrize("module,package", [(liger_fused_ce, "liger_kernel"), (cce_fused_ce, "cut_cross_entropy")])
def test_reference_transforms_give_the_same_loss_on_gpu(module, package):
    pytest.importorskip(package)
    torch.manual_seed(0)
    model = build_model(SPEC, torch.bfloat16, torch.device("cuda"))
    batch = torch.randint(0, 997, (3, 21), device="cuda")
    expected = model(input_ids=batch, labels=batch).loss.float()
    module.apply(model, None, torch.device("cuda"))
    torch.testing.assert_close(model(input_ids=batch, labels=batch).loss.float(), expected, rtol=2e-2, atol=2e-2)
