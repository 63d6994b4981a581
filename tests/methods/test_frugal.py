"""FRUGAL against its rule (Zmushko et al., 2025): Adam in the projected subspace + signSGD on the residual."""
import torch

from harness.schema import parse
from methods import frugal
from tests.methods import lowrank_reference as ref
from tests.methods.common import run_optimizer


def test_frugal_matches_the_rule():
    gen = torch.Generator().manual_seed(4)
    w0 = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(7)]
    options = parse(frugal.Options, {"lr": 0.01, "rank": 2, "update_gap": 3, "free_lr_ratio": 0.5}, "m")
    w = torch.nn.Parameter(w0.clone())
    opt = frugal.build([("self_attn.w", w)], options, torch.device("cpu"))
    run_optimizer(opt, [w], [[g] for g in grads])
    expected = ref.run(w0, grads, 0.01, 3, ref.eigh_proj(2), lambda g, r, n, p, left, memo:
                       ref.back(n, p, left) + 0.5 * (g - ref.back(r, p, left)).sign())
    torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-9)
