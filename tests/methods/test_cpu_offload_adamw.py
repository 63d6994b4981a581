"""Optimizer-state offloading: the AdamW rule (the same parameters as torch.optim.AdamW after several steps); the
states live in host memory (pinned where CUDA exists) and not on the device, so the probe's optimizer_state is 0
where AdamW's is 2 × the parameters' bytes, the host holds those bytes instead, and no gradient stays on the device
after the backward. On a GPU (`@pytest.mark.gpu`) it and torchao's CPUOffloadOptimizer equal AdamW step by step."""
import pytest
import torch

from harness.models import build_model
from harness.probes import optimizer_state_tensors, storage_bytes
from harness.schema import LlamaSpec, parse
from methods import adamw, cpu_offload_adamw, torchao_cpu_offload

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)
SETTINGS = {"lr": 1e-2, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}


def _train(module, device="cpu", steps=4, dtype=torch.float32):
    torch.manual_seed(0)
    device = torch.device(device)
    model = build_model(SPEC, dtype, device)
    opt = module.build(list(model.named_parameters()), parse(module.Options, SETTINGS, "m"), device)
    batch = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1)).to(device)
    grads_left = []
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        grads_left.append(sum(p.grad is not None for p in model.parameters()))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt, grads_left


def test_adamw_rule_with_states_off_the_device():
    ours, opt, grads_left = _train(cpu_offload_adamw)
    reference, ref_opt, _ = _train(adamw)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    param_bytes = sum(p.numel() * 4 for p in ours.parameters())
    assert storage_bytes(optimizer_state_tensors(ref_opt)) >= 2 * param_bytes
    assert storage_bytes(optimizer_state_tensors(opt)) == 0
    host = [t for state in opt.host_state().values() for t in state.values() if t.numel() > 1]
    assert sum(t.untyped_storage().nbytes() for t in host) == 2 * param_bytes
    assert opt.row_fields()["optimizer_state_host"] >= 2 * param_bytes
    assert all(t.is_pinned() == torch.cuda.is_available() for t in host)
    assert grads_left == [0] * 4  # every gradient went to the host during the backward


@pytest.mark.gpu
def test_tracks_torchao_cpu_offload_optimizer():
    """On fixed gradients (loss = Σ p · G_t, so no update feeds back into the next gradient): ours and torchao's
    equal torch's AdamW on the GPU, a matrix (offloaded by both) and a vector (torchao keeps it on the device)."""
    pytest.importorskip("torchao")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 128, generator=gen), torch.randn(32, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen).to(device) for t in start] for _ in range(5)]
    trained = {}
    for module in (adamw, cpu_offload_adamw, torchao_cpu_offload):
        params = [torch.nn.Parameter(t.clone().to(device)) for t in start]
        opt = module.build([(f"p{i}", p) for i, p in enumerate(params)], parse(module.Options, SETTINGS, "m"),
                           device)
        for step_grads in grads:
            sum((p * g).sum() for p, g in zip(params, step_grads, strict=True)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        trained[module] = (params, opt)
    reference = trained[adamw][0]
    for module in (cpu_offload_adamw, torchao_cpu_offload):
        for a, b in zip(trained[module][0], reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ours, theirs = trained[cpu_offload_adamw][1], trained[torchao_cpu_offload][1]
    assert storage_bytes(optimizer_state_tensors(ours)) == 0
    assert ours.row_fields()["optimizer_state_host"] >= theirs.row_fields()["optimizer_state_host"] >= 2 * 64 * 128 * 4
