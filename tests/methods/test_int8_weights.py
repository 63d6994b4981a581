"""INT8 weights: nearest rounding within half a step, stochastic rounding unbiased, the layer computes x Ŵᵀ + b and
hands the optimizer exactly ∂L/∂W = dyᵀ x, bytes per weight 1 + 4/group."""
import torch

from harness.probes import storage_bytes
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
