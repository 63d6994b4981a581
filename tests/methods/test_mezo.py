"""MeZO and ZO-Adam against their rules: the perturbation z is read off the parameters the loss was evaluated at,
then θ_new must equal θ − lr·ĝ·z (MeZO) or the Adam update of g = ĝ·z (ZO-Adam); θ is restored exactly between."""
import pytest
import torch

from harness.schema import parse
from methods import mezo, zo_adam


def _quadratic_setup():
    gen = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))]
    target = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    seen = []

    def loss_at(values):
        return sum(((p - t) ** 2).sum() for p, t in zip(values, target, strict=True))

    def closure():
        seen.append([p.detach().clone() for p in params])
        return loss_at(params)

    return params, closure, seen, loss_at


def _one_step(optimizer, params, closure, seen, eps):
    before = [p.detach().clone() for p in params]
    seen.clear()
    optimizer.step(closure)
    plus, minus = seen
    z = [(a - b) / eps for a, b in zip(plus, before, strict=True)]
    for m, b, zi in zip(minus, before, z, strict=True):
        torch.testing.assert_close(m, b - eps * zi, rtol=0, atol=1e-12)
    return before, z


def test_mezo_matches_zo_sgd():
    params, closure, seen, loss_at = _quadratic_setup()
    opt = mezo.build(list(enumerate(params)), parse(mezo.Options, {"lr": 0.01, "eps": 1e-3}, "m"),
                     torch.device("cpu"))
    for _ in range(5):
        before, z = _one_step(opt, params, closure, seen, 1e-3)
        plus, minus = seen
        g_hat = (loss_at(plus) - loss_at(minus)) / 2e-3
        for p, b, zi in zip(params, before, z, strict=True):
            torch.testing.assert_close(p.detach(), b - 0.01 * g_hat * zi, rtol=1e-9, atol=1e-12)
    assert not any(opt.state.values())  # MeZO keeps no optimizer state


def test_zo_adam_matches_adam_on_the_estimate():
    params, closure, seen, loss_at = _quadratic_setup()
    opt = zo_adam.build(list(enumerate(params)), parse(zo_adam.Options, {"lr": 0.01}, "m"), torch.device("cpu"))
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, 5):
        before, z = _one_step(opt, params, closure, seen, 1e-3)
        plus, minus = seen
        g_hat = (loss_at(plus) - loss_at(minus)) / 2e-3
        for i, (p, b, zi) in enumerate(zip(params, before, z, strict=True)):
            g = g_hat * zi
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            expected = b - 0.01 * (m[i] / (1 - 0.9**t)) / ((v[i] / (1 - 0.999**t)).sqrt() + 1e-8)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-7, atol=1e-10)


def test_perturbation_is_standard_normal_and_fresh_each_step():
    p = torch.nn.Parameter(torch.zeros(20000, dtype=torch.float64))
    seen = []
    # lr must be > 0; at 1e-12 the update (lr · ĝ · z, |ĝ| ~ 150) is far below the tolerances checked
    opt = mezo.build([("w", p)], parse(mezo.Options, {"lr": 1e-12, "eps": 1.0}, "m"), torch.device("cpu"))
    for _ in range(2):
        opt.step(lambda: seen.append(p.detach().clone()) or p.sum())
    z1, z2 = seen[0], seen[2]
    assert abs(float(z1.mean())) < 0.03 and float(z1.std()) == pytest.approx(1.0, abs=0.03)
    assert not torch.equal(z1, z2)
