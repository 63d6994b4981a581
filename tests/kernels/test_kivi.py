"""KIVI: quantization error within the asymmetric bound s/2 per group, packing round trip, the byte budget at
4096 tokens, and the decode attention kernel against plain attention over the dequantized cache (odd lengths,
residual present, 2 and 4 bits). Runs on CPU through TRITON_INTERPRET=1."""
import pytest
import torch

from harness.probes import storage_bytes
from membench_kernels.kivi import KIVICache, _decode_torch, kivi_decode_attention, pack, quantize_groups, unpack

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("bits", [2, 4])
def test_quantization_error_within_half_a_step(bits):
    x = torch.randn(3, 64, 40, generator=torch.Generator().manual_seed(bits)) * 3
    codes, scale, zero = quantize_groups(x, bits, dim=1)
    x_hat = codes.float() * scale.float() + zero.float()
    step = (x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)) / (2**bits - 1)
    # half a quantization step, plus the fp16 rounding of scale and zero
    assert ((x - x_hat).abs() <= step / 2 + 2e-3 * (x.abs().amax() + 1)).all()
    assert int(codes.max()) <= 2**bits - 1


@pytest.mark.parametrize("bits,dim", [(2, 2), (4, 2), (2, 3), (4, 3)])
def test_pack_round_trip(bits, dim):
    codes = torch.randint(0, 2**bits, (2, 3, 16, 8), dtype=torch.uint8)
    packed = pack(codes, bits, dim)
    assert packed.shape[dim] == codes.shape[dim] * bits // 8
    assert torch.equal(unpack(packed, bits, dim), codes)


def test_two_bit_cache_is_under_sixteen_percent_of_bf16_at_4096_tokens():
    cache = KIVICache(bits=2, group=128, value_group=128)
    b, h, d, t = 1, 2, 128, 4096
    for _ in range(t // 512):
        cache.append(torch.randn(b, h, 512, d), torch.randn(b, h, 512, d))
    bf16_bytes = 2 * b * h * t * d * 2
    ratio = storage_bytes(cache.tensors()) / bf16_bytes
    assert ratio <= 0.16, ratio


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("tokens,group", [(160, 32), (77, 16), (64, 64), (20, 32)])
@pytest.mark.parametrize("value_group", [16, 32])  # per-channel-group and per-token (whole head) value scales
def test_decode_attention_matches_attention_over_the_dequantized_cache(bits, tokens, group, value_group):
    gen = torch.Generator().manual_seed(tokens)
    b, h, d = 2, 3, 32
    cache = KIVICache(bits=bits, group=group, value_group=value_group)
    k, v = torch.randn(b, h, tokens, d, generator=gen), torch.randn(b, h, tokens, d, generator=gen)
    cache.append(k[:, :, :50].to(DEVICE), v[:, :, :50].to(DEVICE))
    cache.append(k[:, :, 50:].to(DEVICE), v[:, :, 50:].to(DEVICE))
    q = torch.randn(b, h, d, generator=gen).to(DEVICE)
    keys, values = cache.dequantized()
    scores = torch.einsum("bhd,bhtd->bht", q.double() / d**0.5, keys.double())
    expected = torch.einsum("bht,bhtd->bhd", scores.softmax(-1), values.double())
    out = kivi_decode_attention(q, cache)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_decode_torch(q, cache, d**-0.5).double(), expected, rtol=1e-4, atol=1e-5)
    exact = torch.einsum("bht,bhtd->bhd", torch.einsum("bhd,bhtd->bht", q.double().cpu() / d**0.5,
                                                       k.double()).softmax(-1), v.double())
    # against the unquantized cache the error is quantization error: bounded, larger for 2 bits
    assert float((out.double().cpu() - exact).abs().mean()) < (0.35 if bits == 2 else 0.08)


def test_bad_bits_refused():
    with pytest.raises(ValueError, match="2 or 4"):
        KIVICache(bits=3)


def test_non_power_of_two_head_dim_takes_the_plain_path():
    gen = torch.Generator().manual_seed(9)
    cache = KIVICache(bits=4, group=16, value_group=16)
    k, v = torch.randn(1, 2, 40, 48, generator=gen), torch.randn(1, 2, 40, 48, generator=gen)
    cache.append(k, v)
    q = torch.randn(1, 2, 48, generator=gen)
    keys, values = cache.dequantized()
    expected = torch.einsum("bht,bhtd->bhd", torch.einsum("bhd,bhtd->bht", q / 48**0.5, keys).softmax(-1), values)
    torch.testing.assert_close(kivi_decode_attention(q, cache), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tokens,programs,block", [(4096, 32, 64), (160, 2, 32), (77, 512, 16), (64, 1, 64)])
def test_token_chunks_cover_the_cache_without_empty_programs(tokens, programs, block):
    """Flash-decoding split: chunks are whole BLOCK_T tiles, every chunk holds at least one token, and at batch 1
    (32 heads, 4096 tokens) the grid has hundreds of programs, not 32."""
    from membench_kernels.kivi import _chunk_tokens

    chunk = _chunk_tokens(tokens, programs, block)
    splits = -(-tokens // chunk)
    assert chunk % block == 0 and (splits - 1) * chunk < tokens <= splits * chunk
    if (tokens, programs) == (4096, 32):
        assert programs * splits >= 256


@pytest.mark.parametrize("block_tokens,num_warps", [(16, 2), (128, 8)])
def test_decode_kernel_shape_does_not_change_the_result(block_tokens, num_warps):
    gen = torch.Generator().manual_seed(7)
    cache = KIVICache(bits=2, group=64, value_group=32)
    cache.append(torch.randn(1, 2, 200, 32, generator=gen).to(DEVICE), torch.randn(1, 2, 200, 32, generator=gen).to(DEVICE))
    q = torch.randn(1, 2, 32, generator=gen).to(DEVICE)
    torch.testing.assert_close(kivi_decode_attention(q, cache, block_tokens=block_tokens, num_warps=num_warps),
                               kivi_decode_attention(q, cache), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits,value_group", [(2, 32), (4, 16), (2, 8)])
def test_quantize_kernel_equals_the_torch_path(bits, value_group, monkeypatch):
    from membench_kernels import kivi

    gen = torch.Generator().manual_seed(bits * value_group)
    gk = (torch.randn(2, 3, 32, 32, generator=gen) * 2).half()
    gv = (torch.randn(2, 3, 32, 32, generator=gen) * 2).half()
    gk[0, 0, :, 5] = 1.5  # a constant channel: zero range, the scale's floor
    gv[1, 2, 4] = -0.25  # a constant token
    cache = KIVICache(bits=bits, group=32, value_group=value_group)
    kernel = cache._quantize(gk.to(DEVICE), gv.to(DEVICE))
    monkeypatch.setattr(kivi, "triton_runs_on", lambda x: False)
    plain = cache._quantize(gk, gv)
    assert set(kernel) == set(plain)
    for name, part in plain.items():
        assert kernel[name].shape == part.shape and kernel[name].dtype == part.dtype, name
        torch.testing.assert_close(kernel[name].cpu(), part, rtol=0, atol=0, msg=name)
