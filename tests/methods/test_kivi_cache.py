"""KIVI as a transformers Cache: every cached key and value within its group's round-trip bound s/2, the decode
attention equal to attention over the dequantized cache, and prompts joined from micro-batches as one forward."""
import pytest
import torch

from harness.infer import prefill
from membench_kernels.kivi import KIVICache
from methods import kivi_cache, kv_cache
from methods.kv_cache import sdpa
from tests.methods.common import DEVICES
from tests.methods.kv_common import prompt, tiny_llama


@pytest.mark.parametrize("bits", [2, 4])
def test_cached_keys_and_values_are_within_half_a_quantization_step(bits):
    """Keys per channel over G tokens, values per token over G channels: |x − x̂| ≤ s/2, s = (max − min)/(2^b − 1)
    of the group (plus fp16 rounding of x, s and the zero); the residual (< G newest tokens) is x in fp16."""
    group, b, h, t, d = 32, 2, 3, 75, 32
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d) * 3
    layer = kivi_cache.KIVILayer(bits, group, reserve_tokens=t)
    layer.update(k[:, :, :50], v[:, :, :50])
    for i in range(50, t):
        layer.update(k[:, :, i:i + 1], v[:, :, i:i + 1])
    keys, values = layer.kivi.dequantized()
    quantized = t // group * group
    kg = k[:, :, :quantized].reshape(b, h, -1, group, d)
    k_step = (kg.amax(3, keepdim=True) - kg.amin(3, keepdim=True)) / (2**bits - 1)
    k_err = (keys[:, :, :quantized].reshape(kg.shape) - kg).abs()
    assert (k_err <= k_step / 2 + 2e-3 * kg.abs().amax(3, keepdim=True) + 1e-3).all()
    vg = v[:, :, :quantized]
    v_step = (vg.amax(-1, keepdim=True) - vg.amin(-1, keepdim=True)) / (2**bits - 1)
    assert ((values[:, :, :quantized] - vg).abs() <= v_step / 2 + 2e-3 * vg.abs().amax(-1, keepdim=True) + 1e-3).all()
    torch.testing.assert_close(keys[:, :, quantized:], k[:, :, quantized:].half().float())
    assert layer.get_seq_length() == t


@pytest.mark.parametrize("device", DEVICES)
def test_decode_attention_is_attention_over_the_dequantized_cache(device):
    """Keys and values laid out as a model's projections give them (a transposed view, not contiguous): the fused
    kernel (Triton on CUDA, or its interpreter on CPU) against SDPA over the dequantized cache."""
    module = tiny_llama().model.layers[0].self_attn
    layer = kivi_cache.KIVILayer(2, 16, reserve_tokens=64)
    k, v = (torch.randn(2, 40, 4, 16, device=device).transpose(1, 2) for _ in range(2))
    q = torch.randn(2, 1, 4, 16, device=device).transpose(1, 2)
    layer.update(k[:, :, :39], v[:, :, :39])
    layer.update(k[:, :, 39:], v[:, :, 39:])
    out, _ = layer.attend(module, q, k[:, :, 39:], v[:, :, 39:], None, 16**-0.5)
    keys, values = layer.kivi.dequantized()
    torch.testing.assert_close(out, sdpa(q, keys, values, 16**-0.5, None), atol=1e-3, rtol=1e-3)
    reference = KIVICache(bits=2, group=16, value_group=16)  # the same cache from contiguous copies
    reference.append(k.contiguous(), v.contiguous())
    for mine, theirs in zip(layer.kivi.dequantized(), reference.dequantized(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_generation_through_kivi_4bit_stays_close_to_the_full_cache():
    """4-bit codes on a random tiny model: next-token logits move little (a check that the layer is wired to the
    model's attention, not a fidelity claim)."""
    model, ids = tiny_llama(head_dim=32), prompt(2, 70)
    with torch.no_grad():
        cache, _ = prefill(model, lambda: kivi_cache.build(model, kivi_cache.Options(bits=4, group=32), 80), ids, 1)
        quantized = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
        kv_cache.bind(model, None)
        full = model(input_ids=torch.cat([ids, ids[:, -1:]], 1), use_cache=False).logits[:, -1]
    assert (quantized - full).abs().max() < 0.05 * full.abs().max()
    assert cache.layers[0].kivi.views is None or cache.layers[0].kivi.views["key_codes"].shape[0] == 2
