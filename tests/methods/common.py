"""Shared fixtures for method tests: a few parameters, a fixed gradient sequence, a runner."""
import pytest
import torch

# Reference comparisons run on the CPU in CI and again on a GPU host (`make test-gpu`).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def make_params(seed: int = 0, dtype=torch.float64) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 11)]  # odd shapes, a matrix, a vector
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def gradient_sequence(params, steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def run_optimizer(optimizer, params, grads_per_step) -> None:
    for grads in grads_per_step:
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        optimizer.step()


def train_linear(runs, steps: int = 20, device: str = "cpu"):
    """Identical small linear models trained on the same data, one per run given as (method module, its option
    settings); returns [(model, optimizer, per-step losses)], each loss taken before that step's update."""
    from harness.schema import parse

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 256)).to(device) for _ in runs]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    x = torch.randn(64, 256, device=device)
    trained = []
    for model, (module, settings) in zip(models, runs, strict=True):
        opt = module.build([(f"mlp.{n}", p) for n, p in model.named_parameters()],
                           parse(module.Options, settings, "m"), torch.device(device))
        losses = []
        for _ in range(steps):
            loss = (model(x) - x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        trained.append((model, opt, losses))
    return trained


def max_step_gap(a: list[float], b: list[float]) -> float:
    """The largest difference between two loss curves at the same step."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def assert_losses_track(ours: list[float], theirs: list[float], full: list[float], share: float = 0.1) -> None:
    """Per-step losses of two quantized versions of one rule (ours, the reference package's) and of the rule in full
    precision: at every step ours and theirs differ by under `share` of the largest distance of theirs from full
    precision — the noise that quantizing the state brings to the method itself. Both must train."""
    noise = max_step_gap(theirs, full)
    assert ours[-1] < ours[0] and theirs[-1] < theirs[0], (ours, theirs)
    assert noise > 0, "the reference equals full precision: no quantization noise to measure parity against"
    assert max_step_gap(ours, theirs) < share * noise, {"ours-theirs": max_step_gap(ours, theirs), "noise": noise}


def assert_tracks_reference(params, optimizers, grads) -> None:
    """Steps (ours, the reference package's, the full-precision rule) — three parameters, their optimizers — on the
    same gradients; then ours differs from the reference by on average under a tenth of the reference's distance to
    full precision, and is no further from it (within 5 %): the check for quantized states, where two quantizers
    may round a value to neighbouring codes."""
    for g in grads:
        for p, opt in zip(params, optimizers, strict=True):
            p.grad = g.clone()
            opt.step()

    def mean_gap(a, b):
        return float((a - b).detach().abs().mean())

    ours, theirs, full = params
    gaps = {"ours-theirs": mean_gap(ours, theirs), "theirs-full": mean_gap(theirs, full),
            "ours-full": mean_gap(ours, full)}
    assert gaps["ours-theirs"] < 0.1 * gaps["theirs-full"], gaps
    assert gaps["ours-full"] <= 1.05 * gaps["theirs-full"], gaps


def saved_by_forward(model, batch, before_backward=lambda: None):
    """(loss, the live bytes the forward leaves for the backward, before_backward()'s value), counted by the
    live-tensor probe over the model's own tensors and the batch; the backward has run when this returns."""
    from harness.probes import LiveTensorProbe, model_tensors

    probe = LiveTensorProbe()
    probe.register(model_tensors(model) + [batch])
    with probe:
        start = probe.current
        loss = model(input_ids=batch, labels=batch).loss
        saved = probe.current - start
        seen = before_backward()
        loss.backward()
    return loss.detach(), saved, seen
