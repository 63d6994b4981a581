"""Sparse MeZO against its rule: the perturbation read off the parameters is m ⊙ z with m the (1 − sparsity) share of
each parameter's entries of smallest |θ| at the step's start, and θ_new = θ − lr · ĝ · (m ⊙ z); at sparsity 0 it is
MeZO exactly."""
import math

import torch

from harness.schema import parse
from methods import mezo, sparse_mezo
from tests.methods.test_mezo import _quadratic_setup as _setup


def test_perturbs_and_updates_the_smallest_entries_only():
    params, closure, seen, loss_at = _setup()
    eps, lr, sparsity = 1e-3, 0.01, 0.7
    opt = sparse_mezo.build(list(enumerate(params)),
                            parse(sparse_mezo.Options, {"lr": lr, "eps": eps, "sparsity": sparsity}, "m"),
                            torch.device("cpu"))
    for _ in range(4):
        before = [p.detach().clone() for p in params]
        seen.clear()
        opt.step(closure)
        plus, minus = seen
        g_hat = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        for p, b, pl in zip(params, before, plus, strict=True):
            z = (pl - b) / eps
            keep = math.ceil((1 - sparsity) * b.numel())
            smallest = torch.zeros(b.numel(), dtype=torch.bool)
            smallest[b.abs().flatten().argsort()[:keep]] = True
            assert torch.equal(z.flatten() != 0, smallest)  # z is never exactly 0 where it is drawn
            torch.testing.assert_close(p.detach(), b - lr * g_hat * z, rtol=1e-9, atol=1e-12)


def test_sparsity_zero_is_mezo():
    runs = []
    for module, extra in ((mezo, {}), (sparse_mezo, {"sparsity": 0.0})):
        params, closure, _, _ = _setup()
        opt = module.build(list(enumerate(params)), parse(module.Options, {"lr": 0.01, **extra}, "m"),
                           torch.device("cpu"))
        for _ in range(3):
            opt.step(closure)
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
