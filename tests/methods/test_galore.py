"""GaLore against its rule written out (Zhao et al., 2024, Algorithm 2): SVD projection every T steps, Adam on the
projected gradient, α-scaled projection back; non-target parameters get AdamW."""
import pytest
import torch

from harness.schema import parse
from methods import galore
from methods.lowrank import fused_adamw
from tests.methods import lowrank_reference as ref
from tests.methods.common import DEVICES, run_optimizer


@pytest.mark.parametrize("projection,proj_fn", [("eigh", ref.eigh_proj), ("svd", ref.svd_proj)])
@pytest.mark.parametrize("shape", [(6, 11), (13, 5)])  # left and right projection, odd sizes
def test_galore_matches_the_rule(shape, projection, proj_fn):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(12)]
    options = parse(galore.Options, {"lr": 0.01, "rank": 3, "update_gap": 5, "scale": 0.25, "projection": projection},
                    "m")
    w = torch.nn.Parameter(w0.clone())
    opt = galore.build([("layers.0.mlp.up_proj.weight", w)], options, torch.device("cpu"))
    run_optimizer(opt, [w], [[g] for g in grads])
    expected = ref.run(w0, grads, 0.01, 5, proj_fn(3), lambda g, r, n, p, left, memo: 0.25 * ref.back(n, p, left))
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


@pytest.mark.parametrize("shape", [(7, 300), (300, 7), (40, 40)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_eigh_and_svd_projections_span_the_same_subspace(shape, dtype):
    """A gradient with a spectral gap after the rank: both projections give the same P Pᵀ, in bf16 too, with the
    Gram matrix accumulated over column chunks narrower than G."""
    gen = torch.Generator().manual_seed(11)
    m, n = shape
    low_rank = torch.randn(m, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, n, generator=gen,
                                                                                     dtype=torch.float64)
    g = (10 * low_rank + 0.01 * torch.randn(m, n, generator=gen, dtype=torch.float64)).to(dtype)
    side = "left" if m < n else "right"
    a, b = galore.eigh_projection(g, 3, side), galore.svd_projection(g, 3, side)
    assert a.dtype == b.dtype == torch.promote_types(dtype, torch.float32) and a.shape == b.shape == (min(shape), 3)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(a @ a.T, b @ b.T, rtol=0, atol=tolerance)
    wide = g if side == "left" else g.T
    torch.testing.assert_close(galore.gram(g, side, chunk=64), wide.to(a.dtype) @ wide.to(a.dtype).T,
                               rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)  # fp32: summation order


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (20, 20)])
@pytest.mark.parametrize("projection,gap", [("svd", 10), ("eigh", 25)])
def test_galore_matches_galore_torch(shape, device, projection, gap):
    """galore-torch refreshes with torch.linalg.svd: `projection: svd` follows it through refreshes. The eigh
    projection's vectors are the same up to sign, and the update is unchanged by a vector's sign within one
    projection; across refreshes the moments (kept, as galore-torch keeps them) would see flipped rows, so that
    comparison runs one projection for the 25 steps."""
    galore_torch = pytest.importorskip("galore_torch")
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(shape, generator=gen).to(device)
    grads = [torch.randn(shape, generator=gen).to(device) for _ in range(25)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    options = parse(galore.Options, {"lr": 0.01, "rank": 4, "update_gap": gap, "scale": 0.25,
                                     "projection": projection}, "m")
    opt_ours = galore.build([("mlp.w", ours)], options, torch.device(device))
    opt_theirs = galore_torch.GaLoreAdamW([{"params": [theirs], "rank": 4, "update_proj_gap": gap, "scale": 0.25,
                                            "proj_type": "std"}], lr=0.01, no_deprecation_warning=True)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    # the only difference in rule: galore-torch adds eps to sqrt(v) before bias correction
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parameters_outside_the_subspace_follow_torch_adamw(dtype):
    """Embeddings, head and norms get torch's (fused) AdamW, bit for bit, with moments in the parameter's dtype (as
    the reference packages keep them), not fp32 copies."""
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(9, 4, generator=gen).to(dtype)
    grads = [torch.randn(9, 4, generator=gen).to(dtype) for _ in range(10)]
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = galore.build([("model.embed_tokens.weight", ours)],
                       parse(galore.Options, {"lr": 0.01, "weight_decay": 0.1}, "m"), torch.device("cpu"))
    reference = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.1, fused=True)
    run_optimizer(opt, [ours], [[g] for g in grads])
    run_optimizer(reference, [theirs], [[g] for g in grads])
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=0)
    assert opt.state[ours]["exp_avg"].dtype == dtype


def test_fused_adamw_groups_dtypes_and_steps_like_torch():
    """lowrank.fused_adamw over parameters of two dtypes at different step counts: each one bit for bit torch's
    fused AdamW at its own step (the kernel needs one dtype per call, and the step counts are made per call)."""
    gen = torch.Generator().manual_seed(5)
    shapes_dtypes = [((5, 3), torch.float32), ((4,), torch.bfloat16), ((2, 7), torch.float32)]
    ours = [torch.randn(s, generator=gen).to(d) for s, d in shapes_dtypes]
    theirs = [torch.nn.Parameter(p.clone()) for p in ours]
    references = [torch.optim.AdamW([p], lr=0.01, weight_decay=0.1, fused=True) for p in theirs]
    states = [{"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in ours]
    for t in range(4):
        stepping = [i for i in range(3) if t > 0 or i == 0]  # one fp32 parameter a step ahead of the other
        grads = [torch.randn(ours[i].shape, generator=gen).to(ours[i].dtype) for i in stepping]
        for i, g in zip(stepping, grads, strict=True):
            states[i]["step"] += 1
            theirs[i].grad = g.clone()
            references[i].step()
        fused_adamw([ours[i] for i in stepping], grads, [states[i] for i in stepping], 0.01, (0.9, 0.999), 0.1,
                    1e-8)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
