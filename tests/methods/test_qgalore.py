"""Q-GaLore's rule written out: 8-bit GaLore through an INT4-quantized projection, applied to INT8 weights
(nearest rounding here so the reference is deterministic); and the lazy refresh doubles a layer's gap once its
subspace stays put."""
import torch

from harness.schema import parse
from membench_kernels.quant import dynamic_map
from methods import int8_weights, qgalore
from methods.int8_weights import Int8Linear, dequantize_int8, quantize_int8
from tests.methods import lowrank_reference as ref
from tests.methods.test_adamw8bit import plain_roundtrip


class _Model(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.up_proj = layer


def _setup(options_overrides):
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(48, 16, bias=False),
                       parse(int8_weights.Options, {"group_size": 16, "stochastic_rounding": False}, "m"),
                       torch.Generator())
    options = parse(qgalore.Options, {"lr": 0.01, "rank": 4, "block_size": 16, **options_overrides}, "m")
    norm = torch.nn.Parameter(torch.ones(16))  # an optimizer needs one ordinary parameter
    opt = qgalore.build([("norm.weight", norm)], options, torch.device("cpu"))
    opt.attach_quantized(_Model(layer))
    return layer, opt


def test_qgalore_matches_the_rule():
    layer, _ = _setup({"update_gap": 3, "similarity": 2.0})  # similarity > 1: the gap never grows
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(16, 48, generator=gen) for _ in range(7)]
    codes, scale = layer.codes.clone(), layer.scale.clone()
    for g in grads:
        layer.updater(g)
    proj = m = v = None
    for t, g in enumerate(grads, start=1):
        if (t - 1) % 3 == 0:
            p = ref.eigh_proj(4)(g, t)  # 16 < 48: left projection
            s = p.abs().amax(dim=0, keepdim=True) / 7
            proj = (p / s).round().clamp(-7, 7) * s  # INT4 codes × column scale
        r = proj.T @ g
        m = torch.zeros_like(r) if m is None else m
        v = torch.zeros_like(r) if v is None else v
        n, m, v = ref.adam_direction(r, m, v, t)
        m, v = plain_roundtrip(m, dynamic_map(True), 16).float(), plain_roundtrip(v, dynamic_map(False), 16).float()
        w = dequantize_int8(codes, scale, 16) - 0.01 * 0.25 * proj @ n
        codes, scale = quantize_int8(w, 16, None)
    torch.testing.assert_close(layer.codes, codes, rtol=0, atol=1)  # an ulp of rounding may flip one code
    assert (layer.codes != codes).float().mean() < 0.02


def test_lazy_refresh_doubles_the_gap_when_the_subspace_stays():
    layer, opt = _setup({"update_gap": 2, "similarity": 0.9, "patience": 2})
    g = torch.randn(16, 48, generator=torch.Generator().manual_seed(2))
    for _ in range(12):
        layer.updater(g.clone())  # the same gradient: the same subspace at every refresh
    state = opt.state[layer.codes]
    assert state["last_similarity"] > 0.99 and state["gap"] >= 4
    assert state["proj_codes"].dtype == torch.int8 and int(state["proj_codes"].abs().max()) <= 7
