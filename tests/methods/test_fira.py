"""Fira against its rule (Chen et al., 2024): GaLore's update + column-wise-rescaled, norm-limited residual."""
import torch

from harness.schema import parse
from methods import fira
from tests.methods import lowrank_reference as ref
from tests.methods.common import run_optimizer


def test_fira_matches_the_rule():
    for shape in ((6, 10), (10, 6)):
        gen = torch.Generator().manual_seed(3)
        w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
        grads = [torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + t) for t in range(9)]
        options = parse(fira.Options, {"lr": 0.01, "rank": 2, "update_gap": 4, "scale": 0.5}, "m")
        w = torch.nn.Parameter(w0.clone())
        opt = fira.build([("mlp.w", w)], options, torch.device("cpu"))
        run_optimizer(opt, [w], [[g] for g in grads])

        def update(g, r, n, proj, left, memo):
            dim = 0 if left else 1
            phi = n.norm(dim=dim) / r.norm(dim=dim)
            residual = (g - ref.back(r, proj, left)) * (phi.unsqueeze(0) if left else phi.unsqueeze(1))
            return 0.5 * (ref.back(n, proj, left) + ref.limit(residual, memo, "res"))

        expected = ref.run(w0, grads, 0.01, 4, ref.eigh_proj(2), update)
        torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-9)
