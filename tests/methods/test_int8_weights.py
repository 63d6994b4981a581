"""INT8 weights: nearest rounding within half a step, stochastic rounding unbiased, the layer computes x Ŵᵀ + b and
hands the optimizer exactly ∂L/∂W = dyᵀ x, bytes per weight 1 + 4/group."""
import torch

from harness.probes import LiveTensorProbe, storage_bytes
from harness.schema import parse
from methods import int8_weights
from methods.int8_weights import Int8Linear, dequantize_int8, quantize_int8


def test_nearest_within_half_a_step_and_stochastic_rounding_unbiased():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    codes, scale = quantize_int8(w, 32, None)
    step = scale.repeat_interleave(32, dim=1)
    assert ((dequantize_int8(codes, scale, 32) - w).abs() <= step / 2 + 1e-7).all()
    gen = torch.Generator().manual_seed(1)
    mean = torch.stack([dequantize_int8(*quantize_int8(w, 32, gen), 32) for _ in range(2000)]).mean(0)
    assert ((mean - w).abs() <= 0.1 * step).all()  # unbiased: the average lands within a tenth of a step


def test_layer_forward_backward_and_the_gradient_handed_over():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    options = parse(int8_weights.Options, {"group_size": 32, "stochastic_rounding": False}, "m")
    layer = Int8Linear(linear, options, torch.Generator())
    received = []
    layer.updater = received.append
    x = torch.randn(3, 5, 64, requires_grad=True)
    dy = torch.randn(3, 5, 24)
    (layer(x) * dy).sum().backward()
    w_hat = layer.weight().detach().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    (torch.nn.functional.linear(x_ref, w_hat, linear.bias) * dy).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(received[0], w_hat.grad)
    assert storage_bytes([layer.codes, layer.scale]) == 24 * 64 + 4 * 24 * 2


def test_update_is_applied_to_the_codes_in_place():
    layer = Int8Linear(torch.nn.Linear(32, 8), parse(int8_weights.Options, {"group_size": 32,
                                                                             "stochastic_rounding": False}, "m"),
                       torch.Generator())
    codes_before, w_before = layer.codes, layer.weight().clone()
    layer.apply_update(torch.ones(8, 32), lr=0.05, weight_decay=0.0)
    assert layer.codes is codes_before
    expected = dequantize_int8(*quantize_int8(w_before - 0.05, 32, None), 32)
    torch.testing.assert_close(layer.weight(), expected)


def test_row_chunks_give_the_whole_tensor_results_with_a_fraction_of_the_temporaries(monkeypatch):
    """weight() and apply_update work on fp32 copies a few rows at a time: with chunks of 2 rows the bf16 weight and
    the updated codes (nearest rounding, weight decay) equal the whole-tensor computation exactly, and the update's
    temporaries (live-tensor probe) are a fraction of those of one chunk."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24).to(torch.bfloat16)
    options = parse(int8_weights.Options, {"group_size": 32, "stochastic_rounding": False}, "m")
    update = torch.randn(24, 64).to(torch.bfloat16)
    results = []
    for chunk_values in (2 * 64, 24 * 64):
        monkeypatch.setattr(int8_weights, "CHUNK_VALUES", chunk_values)
        layer = Int8Linear(linear, options, torch.Generator())
        weight = layer.weight()
        probe = LiveTensorProbe()
        probe.register([layer.codes, layer.scale, update])
        before = probe.current
        with probe:
            layer.apply_update(update, lr=0.05, weight_decay=0.1)
        results.append((weight, layer.codes.clone(), layer.scale.clone(), probe.peak - before))
    (w_chunked, codes_chunked, scale_chunked, temp_chunked), (w_whole, codes_whole, scale_whole, temp_whole) = results
    assert w_chunked.dtype == torch.bfloat16 and torch.equal(w_chunked, w_whole)
    fresh = Int8Linear(linear, options, torch.Generator())
    w = dequantize_int8(fresh.codes, fresh.scale, 32)
    w.mul_(1 - 0.05 * 0.1)
    w.add_(update, alpha=-0.05)
    expected_codes, expected_scale = quantize_int8(w, 32, None)
    assert torch.equal(codes_whole, expected_codes) and torch.equal(scale_whole, expected_scale)
    assert torch.equal(codes_chunked, codes_whole) and torch.equal(scale_chunked, scale_whole)
    assert temp_chunked < 0.25 * temp_whole


def test_the_weight_gradient_is_handed_over_in_the_activations_dtype():
    layer = Int8Linear(torch.nn.Linear(64, 24).to(torch.bfloat16),
                       parse(int8_weights.Options, {"group_size": 32}, "m"), torch.Generator())
    received = []
    layer.updater = received.append
    x = torch.randn(10, 64).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(10, 24).to(torch.bfloat16)
    (layer(x) * dy).sum().backward()
    assert received[0].dtype == torch.bfloat16
    torch.testing.assert_close(received[0], dy.T @ x, rtol=0, atol=0)
