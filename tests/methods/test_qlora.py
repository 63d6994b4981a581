"""QLoRA: NF4 codes are the nearest of the 16 NF4 levels (plain check), the layer computes x Wᵀ with the
dequantized weight plus the LoRA term, base weights cost 0.5625 bytes each, and no full weight is kept for backward."""
import torch

from harness.models import build_model
from harness.probes import LiveTensorProbe, model_tensors, storage_bytes
from harness.schema import parse
from membench_kernels.quant import NF4, nf4_dequantize, nf4_quantize
from methods import lora, qlora
from tests.methods.test_lora import SPEC


def test_nf4_roundtrip_is_nearest_level_per_block():
    w = torch.randn(13, 11, generator=torch.Generator().manual_seed(0))
    packed, absmax = nf4_quantize(w, block=16)
    assert packed.dtype == torch.uint8 and packed.numel() == (w.numel() + 1) // 2
    ours = nf4_dequantize(packed, absmax, w.shape, torch.float32, block=16)
    flat, levels = w.reshape(-1), torch.tensor(NF4)
    expected = torch.empty_like(flat)
    for start in range(0, flat.numel(), 16):
        chunk = flat[start:start + 16]
        scale = chunk.abs().max()
        expected[start:start + 16] = levels[(chunk.unsqueeze(1) / scale - levels).abs().argmin(dim=1)] * scale
    torch.testing.assert_close(ours.reshape(-1), expected)


def _qlora_model():
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float32, torch.device("cpu"))
    return qlora.apply(model, parse(qlora.Options, {"rank": 4, "alpha": 8.0}, "m"), torch.device("cpu"))


def test_qlora_layer_rule_and_weight_bytes():
    model = _qlora_model()
    layer = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 3, 32)
    w = nf4_dequantize(layer.base.codes, layer.base.absmax, layer.base.shape, torch.float32)
    torch.testing.assert_close(layer(x), x @ w.T + 2.0 * (x @ layer.lora_a.T @ layer.lora_b.T))
    n = layer.base.shape.numel()
    assert storage_bytes([layer.base.codes, layer.base.absmax]) == n // 2 + 4 * (n // 64)


def test_backward_keeps_codes_not_weights():
    plain = lora.apply(build_model(SPEC, torch.float32, torch.device("cpu")), parse(lora.Options, {"rank": 4}, "m"),
                       torch.device("cpu"))
    quantized = _qlora_model()
    batch = torch.randint(0, 97, (2, 9))
    saved = {}
    for name, model in (("lora", plain), ("qlora", quantized)):
        probe = LiveTensorProbe()
        probe.register(model_tensors(model) + [batch])
        with probe:
            start = probe.current
            loss = model(input_ids=batch, labels=batch).loss
            saved[name] = probe.current - start
            loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert saved["qlora"] <= saved["lora"]  # no dequantized weight is saved for backward
