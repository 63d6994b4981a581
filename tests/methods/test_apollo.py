"""APOLLO and APOLLO-Mini against the rule (Zhu et al., 2025, Algorithm 1): random projection refreshed every T
steps, Adam on R = P G, channel- (or tensor-) wise ratio ‖R̃‖/‖R‖ scaling the raw gradient, norm-growth limiter;
bias correction applied to the final step as apollo-torch does. Also compared with apollo-torch itself."""
import pytest
import torch

from harness.probes import LiveTensorProbe, optimizer_state_tensors
from harness.schema import parse
from methods import apollo, apollo_mini, galore, lowrank
from tests.methods import lowrank_reference as ref
from tests.methods.common import DEVICES


def _run_ours(module, options, w0, grads):
    w = torch.nn.Parameter(w0.clone())
    opt = module.build([("self_attn.q.weight", w)], options, torch.device("cpu"))
    projections = {}
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        projections[t] = opt.state[w]["proj"].clone()
    return w.detach(), projections


@pytest.mark.parametrize("module,overrides,tensorwise", [
    (apollo, {"rank": 3, "scale": 1.0}, False),
    (apollo_mini, {}, True),
])
@pytest.mark.parametrize("shape", [(7, 12), (12, 7)])
def test_apollo_matches_the_rule(module, overrides, tensorwise, shape):
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) * (1 + t) for t in range(10)]  # growing: exercises the limiter
    options = parse(module.Options, {"lr": 0.01, "update_gap": 4, **overrides}, "m")
    ours, projections = _run_ours(module, options, w0, grads)
    alpha = options.scale

    def update(g, r, n, proj, left, memo):
        memo["t"] = memo.get("t", 0) + 1
        c = (1 - 0.999 ** memo["t"]) ** 0.5 / (1 - 0.9 ** memo["t"])
        n = n / c  # the direction before bias correction, which is applied to the final step
        dim = 0 if left else 1
        if tensorwise:
            out = g * (n.norm() / r.norm())
        else:
            s = n.norm(dim=dim) / r.norm(dim=dim)
            out = g * (s.unsqueeze(0) if left else s.unsqueeze(1))
        return alpha * c * ref.limit(out, memo, "prev")

    expected = ref.run(w0, grads, 0.01, 4, lambda g, t: projections[t], update)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_random_projection_statistics_and_refresh():
    w = torch.nn.Parameter(torch.zeros(256, 512))
    opt = apollo.build([("mlp.w", w)], parse(apollo.Options, {"rank": 64, "update_gap": 2}, "m"), torch.device("cpu"))
    seen = []
    for _ in range(3):
        w.grad = torch.randn(256, 512)
        opt.step()
        seen.append(opt.state[w]["proj"].clone())
    proj = seen[0]
    assert proj.shape == (256, 64)
    assert abs(float(proj.mean())) < 0.01 and float(proj.var()) == pytest.approx(1 / 64, rel=0.05)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])  # refreshed every update_gap steps
    assert opt.state[w]["exp_avg"].shape == (64, 512)  # SGD-like memory: rank × n


@pytest.mark.parametrize("scaling,scale,rank", [("channel", 1.0, 4), ("tensor", 128.0, 1)])
@pytest.mark.parametrize("shape", [(16, 24), (24, 16)])
@pytest.mark.parametrize("device", DEVICES)
def test_apollo_matches_apollo_torch_with_the_same_projection(scaling, scale, rank, shape, device, monkeypatch):
    """apollo-torch draws its random projection with its own generator; to compare the rule itself, both sides use
    the SVD projection apollo-torch offers (proj="svd") — everything after the projection is then identical."""
    apollo_torch = pytest.importorskip("apollo_torch")
    from methods.galore import svd_projection

    def svd_refresh(self, grad, state):
        state["side"] = self.side_of(grad)
        state["proj"] = svd_projection(grad, self.options.rank, state["side"])

    monkeypatch.setattr(apollo.ApolloAdamW, "refresh", svd_refresh)
    gen = torch.Generator().manual_seed(8)
    w0 = torch.randn(shape, generator=gen).to(device)
    grads = [(torch.randn(shape, generator=gen) * (1 + 0.2 * t)).to(device) for t in range(25)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    options = parse(apollo.Options, {"lr": 0.01, "rank": rank, "update_gap": 10, "scale": scale**0.5,
                                     "scaling": scaling}, "m")
    opt_ours = apollo.build([("mlp.w", ours)], options, torch.device(device))
    opt_theirs = apollo_torch.APOLLOAdamW([{"params": [theirs], "rank": rank, "update_proj_gap": 10, "scale": scale,
                                            "proj": "svd", "proj_type": "std", "scale_type": scaling}], lr=0.01)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    # fp32, 25 steps; eps sits at a different place (theirs: √v + ε before bias correction; +1e-8 on norms)
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("module", [apollo, apollo_mini])
def test_a_step_over_many_matrices_equals_one_matrix_at_a_time(module):
    """The step stacks matrices of one shape and side for their norms and limits them all in foreach launches:
    the same result as each matrix alone (its projection's seed depends on its shape and step, not its place)."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(7, 12), (7, 12), (12, 7), (9, 12), (7, 12)]
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * (1 + t) for s in shapes] for t in range(6)]
    options = parse(module.Options, {"lr": 0.01, "update_gap": 3, "rank": 3, "weight_decay": 0.1}, "m")
    together = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = module.build([(f"layers.{i}.self_attn.q.weight", w) for i, w in enumerate(together)], options,
                       torch.device("cpu"))
    alone = [torch.nn.Parameter(w.clone()) for w in w0]
    opts = [module.build([("self_attn.q.weight", w)], options, torch.device("cpu")) for w in alone]
    for step_grads in grads:
        for w, g in zip(together, step_grads, strict=True):
            w.grad = g.clone()
        opt.step()
        for w, o, g in zip(alone, opts, step_grads, strict=True):
            w.grad = g.clone()
            o.step()
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("module", [apollo, galore])
def test_a_step_takes_its_matrices_in_batches_of_bounded_temporaries(module, monkeypatch):
    """ProjectedAdamW.batches: at most BATCH_BYTES of projected gradients per batch of foreach launches. Batches of
    two matrices give the parameters of one batch of twelve, with a fraction of its temporaries (live-tensor probe)."""
    gen = torch.Generator().manual_seed(6)
    w0 = [torch.randn(16, 64, generator=gen) for _ in range(12)]
    grads = [[torch.randn(16, 64, generator=gen) for _ in w0] for _ in range(4)]
    options = parse(module.Options, {"lr": 0.01, "rank": 4, "update_gap": 2}, "m")
    results, temporaries = [], []
    for batch_bytes in (2 * 4 * 64 * 4, 2**30):  # two matrices' projected gradients (rank × long side × fp32); all
        monkeypatch.setattr(lowrank, "BATCH_BYTES", batch_bytes)
        ws = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = module.build([(f"layers.{i}.mlp.w", w) for i, w in enumerate(ws)], options, torch.device("cpu"))
        for step_grads in grads:
            for w, g in zip(ws, step_grads, strict=True):
                w.grad = g.clone()
            probe = LiveTensorProbe()  # knows what exists before the step: what it adds is temporary
            probe.register([*ws, *(w.grad for w in ws), *optimizer_state_tensors(opt)])
            before = probe.current
            with probe:
                opt.step()
        temporaries.append(probe.peak - before)
        results.append(ws)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert temporaries[0] < 0.4 * temporaries[1]


def test_growth_ratio_one_matrix_agrees_with_the_foreach_form():
    """The layer-wise loop's growth_ratio and the all-matrices growth_ratios give the same multipliers and record
    the same limited norms: first step (no previous norm), growth past γ, shrinking, and after a zero update."""
    norms = [[torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.0)],
             [torch.tensor(3.0), torch.tensor(0.5), torch.tensor(1.0)],
             [torch.tensor(1.0), torch.tensor(0.6), torch.tensor(0.0)]]
    one, many, seen = [{}, {}, {}], [{}, {}, {}], []
    for step in norms:
        ratios = apollo.growth_ratios(step, many, "prev", 1.01, scale=0.5)
        for norm, state, ratio in zip(step, one, ratios, strict=True):
            assert torch.equal(apollo.growth_ratio(norm, state, "prev", 1.01, scale=0.5), ratio)
        for a, b in zip(one, many, strict=True):
            assert torch.equal(a["prev"], b["prev"])
        seen.append([float(r) for r in ratios])
    assert seen[0] == [0.5, 0.5, 0.5]  # no previous norm: only the scale
    assert seen[1][0] == pytest.approx(0.5 * 2.0 * 1.01 / 3.0) and seen[1][1] == 0.5  # limited; shrinking
    assert seen[1][2] == 0.0  # after a zero update the rule's limit is γ · 0 (apollo-torch's, γ · 1e-8)
