"""8-bit activation compression: the codes' error is within half a channel's scale (|x − x̂| ≤ max|x_c| / 254), the
loss is exact, gradients stay close to the uncompressed ones, the saved activations' live bytes drop (int8 against
fp32), and with checkpointing the layer inputs checkpointing keeps are compressed too."""
import pytest
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import checkpointing, compress_activations
from methods.compress_activations import dequantize, quantize
from tests.methods.common import saved_by_forward

SPEC = LlamaSpec(name="t", family="llama", hidden_size=64, intermediate_size=172, num_attention_heads=4,
                 num_hidden_layers=3, vocab_size=97, max_position_embeddings=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5, 17), (129,), (2, 1, 7, 33)])
def test_error_is_within_half_a_channel_scale(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * torch.logspace(-3, 2, shape[-1])).to(dtype)  # channels of every size
    x_hat = dequantize(*quantize(x), dtype)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape
    bound = x.float().abs().reshape(-1, shape[-1]).amax(0) / 254
    rounding = x.float().abs() * (torch.finfo(dtype).eps if dtype != torch.float64 else 0)  # the result's own dtype
    assert ((x_hat.float() - x.float()).abs() <= bound * (1 + 1e-6) + rounding).all()


def _run(transforms, options=None):
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float32, torch.device("cpu"))
    for part in transforms:
        given = parse(part.Options, options or {}, "m") if hasattr(part, "Options") else None
        part.apply(model, given, torch.device("cpu"))
    model.train()
    batch = torch.randint(0, 97, (4, 33), generator=torch.Generator().manual_seed(1))
    loss, saved, _ = saved_by_forward(model, batch)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()]), saved


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def test_exact_loss_close_gradients_and_fewer_saved_bytes():
    loss, grads, saved = _run([])
    loss_q, grads_q, saved_q = _run([compress_activations], {"min_numel": 256})
    torch.testing.assert_close(loss_q, loss, rtol=0, atol=0)
    assert 0 < _relative(grads_q, grads) < 0.05
    assert saved_q < 0.5 * saved, (saved_q, saved)


def test_composes_with_checkpointing():
    _, grads, _ = _run([])
    _, grads_c, saved_c = _run([checkpointing])
    _, grads_cq, saved_cq = _run([checkpointing, compress_activations], {"min_numel": 256})
    assert 0 < _relative(grads_cq, grads) < 0.05 and _relative(grads_c, grads) < 1e-6
    assert saved_cq < saved_c, (saved_cq, saved_c)
