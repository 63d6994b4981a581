"""Our AdamW part against the update rule of Loshchilov & Hutter (2019), Algorithm 2, written out plainly."""
import math

import torch

from harness.schema import parse
from methods import adamw
from tests.methods.common import gradient_sequence, make_params, run_optimizer


def reference_adamw(params, grads_per_step, lr, betas, eps, wd):
    theta = [p.detach().clone() for p in params]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            theta[i] = theta[i] * (1 - lr * wd)
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat = m[i] / (1 - betas[0] ** t)
            v_hat = v[i] / (1 - betas[1] ** t)
            theta[i] = theta[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


def test_adamw_matches_the_paper_rule():
    params = make_params()
    expected_input = [p.detach().clone() for p in params]
    grads = gradient_sequence(params, 25)
    options = parse(adamw.Options, {"lr": 0.01, "betas": [0.9, 0.95], "weight_decay": 0.1}, "method.optimizer")
    run_optimizer(adamw.build(list(enumerate(params)), options, torch.device("cpu")), params, grads)
    expected = reference_adamw([torch.nn.Parameter(t) for t in expected_input], grads, 0.01, (0.9, 0.95), 1e-8, 0.1)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_adamw_state_is_two_moments_per_parameter():
    params = make_params(dtype=torch.float32)
    options = parse(adamw.Options, {}, "method.optimizer")
    optimizer = adamw.build(list(enumerate(params)), options, torch.device("cpu"))
    run_optimizer(optimizer, params, gradient_sequence(params, 1))
    for p in params:
        state = optimizer.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-3)
