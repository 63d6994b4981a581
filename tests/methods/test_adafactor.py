"""Adafactor (Shazeer & Stern, 2018, Algorithms 4/5 with relative step size and update clipping) written out
plainly, in torch.optim.Adafactor's conventions: ρ_t = min(lr, 1/√t), α_t = max(ε2, RMS(θ)) ρ_t, β2t = 1 − t^c."""
import torch

from harness.schema import parse
from methods import adafactor
from tests.methods.common import gradient_sequence, make_params, run_optimizer


def reference_adafactor(start, grads_per_step, lr, c, eps1, eps2, d):
    theta = [t.clone() for t in start]
    row = [torch.zeros(t.shape[0], 1, dtype=t.dtype) if t.dim() == 2 else None for t in theta]
    col = [torch.zeros(1, t.shape[1], dtype=t.dtype) if t.dim() == 2 else None for t in theta]
    var = [torch.zeros_like(t) if t.dim() == 1 else None for t in theta]
    for t, grads in enumerate(grads_per_step, start=1):
        beta2 = 1 - t ** c
        rho = min(lr, t ** -0.5)
        for i, g in enumerate(grads):
            alpha = max(eps2, float(theta[i].pow(2).mean().sqrt())) * rho
            if g.dim() == 2:
                row[i] = beta2 * row[i] + (1 - beta2) * (g * g).mean(dim=1, keepdim=True)
                col[i] = beta2 * col[i] + (1 - beta2) * (g * g).mean(dim=0, keepdim=True)
                v_hat = row[i] @ col[i] / max(float(row[i].mean()), eps1)
            else:
                var[i] = beta2 * var[i] + (1 - beta2) * g * g
                v_hat = var[i]
            u = g / v_hat.clamp(min=eps1 * eps1).sqrt()
            u = u / max(1.0, float(u.pow(2).mean().sqrt()) / d)
            theta[i] = theta[i] - alpha * u
    return theta


def test_adafactor_matches_the_paper_rule():
    params = make_params()
    start = [p.detach().clone() for p in params]
    grads = gradient_sequence(params, 20)
    options = parse(adafactor.Options, {"lr": 0.01}, "method.optimizer")
    run_optimizer(adafactor.build(list(enumerate(params)), options, torch.device("cpu")), params, grads)
    expected = reference_adafactor(start, grads, 0.01, -0.8, torch.finfo(torch.float64).eps, 1e-3, 1.0)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-12)


def test_factored_state_is_rows_plus_columns():
    params = make_params(dtype=torch.float32)
    optimizer = adafactor.build(list(enumerate(params)), parse(adafactor.Options, {}, "m"), torch.device("cpu"))
    run_optimizer(optimizer, params, gradient_sequence(params, 1))
    state = optimizer.state[params[0]]  # the 7x5 matrix
    assert state["row_var"].numel() == 7 and state["col_var"].numel() == 5
