"""GaLore against its rule written out (Zhao et al., 2024, Algorithm 2): SVD projection every T steps, Adam on the
projected gradient, α-scaled projection back; non-target parameters get AdamW."""
import pytest
import torch

from harness.schema import parse
from methods import galore
from tests.methods import lowrank_reference as ref
from tests.methods.common import DEVICES, run_optimizer


def svd_proj(rank):
    def fn(g, t):
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        return u[:, :rank] if g.shape[0] < g.shape[1] else vh[:rank].T
    return fn


@pytest.mark.parametrize("shape", [(6, 11), (13, 5)])  # left and right projection, odd sizes
def test_galore_matches_the_rule(shape):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(12)]
    options = parse(galore.Options, {"lr": 0.01, "rank": 3, "update_gap": 5, "scale": 0.25}, "m")
    w = torch.nn.Parameter(w0.clone())
    opt = galore.build([("layers.0.mlp.up_proj.weight", w)], options, torch.device("cpu"))
    run_optimizer(opt, [w], [[g] for g in grads])
    expected = ref.run(w0, grads, 0.01, 5, svd_proj(3), lambda g, r, n, p, left, memo: 0.25 * ref.back(n, p, left))
    torch.testing.assert_close(w.detach(), expected, rtol=1e-9, atol=1e-9)
    state = opt.state[w]
    assert state["exp_avg"].shape == ((3, shape[1]) if shape[0] < shape[1] else (shape[0], 3))


def test_only_attention_and_mlp_matrices_are_projected():
    named = [("model.layers.0.self_attn.q_proj.weight", torch.nn.Parameter(torch.randn(8, 8))),
             ("model.embed_tokens.weight", torch.nn.Parameter(torch.randn(20, 8))),
             ("model.layers.0.input_layernorm.weight", torch.nn.Parameter(torch.randn(8)))]
    opt = galore.build(named, parse(galore.Options, {"rank": 2}, "m"), torch.device("cpu"))
    projected = [g for g in opt.param_groups if g["project"]]
    assert len(projected) == 1 and projected[0]["params"][0] is named[0][1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (20, 20)])
def test_galore_matches_galore_torch(shape, device):
    galore_torch = pytest.importorskip("galore_torch")
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(shape, generator=gen).to(device)
    grads = [torch.randn(shape, generator=gen).to(device) for _ in range(25)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    options = parse(galore.Options, {"lr": 0.01, "rank": 4, "update_gap": 10, "scale": 0.25}, "m")
    opt_ours = galore.build([("mlp.w", ours)], options, torch.device(device))
    opt_theirs = galore_torch.GaLoreAdamW([{"params": [theirs], "rank": 4, "update_proj_gap": 10, "scale": 0.25,
                                            "proj_type": "std"}], lr=0.01, no_deprecation_warning=True)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    # the only difference in rule: galore-torch adds eps to sqrt(v) before bias correction
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parameters_outside_the_subspace_follow_torch_adamw(dtype):
    """Embeddings, head and norms get torch's AdamW rule with moments in the parameter's dtype (as the reference
    packages keep them), not fp32 copies."""
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(9, 4, generator=gen).to(dtype)
    grads = [torch.randn(9, 4, generator=gen).to(dtype) for _ in range(10)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = galore.build([("model.embed_tokens.weight", ours)],
                       parse(galore.Options, {"lr": 0.01, "weight_decay": 0.1}, "m"), torch.device("cpu"))
    reference = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.1, foreach=False)
    run_optimizer(opt, [ours], [[g] for g in grads])
    run_optimizer(reference, [theirs], [[g] for g in grads])
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=0)
    assert opt.state[ours]["exp_avg"].dtype == dtype
