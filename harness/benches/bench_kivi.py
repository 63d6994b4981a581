"""Benchmark: KIVI 2-/4-bit KV cache against the bf16 cache at decode (one query token, batch 1): cache bytes
(codes + scales + zeros + fp16 residual) over bf16 bytes, the time to quantize the whole prompt's cache, and
decode-attention time (median of repeats) of our dequantize-fused kernels (chunks of tokens, then one merge with
the fp16 residual) against torch's scaled_dot_product_attention over the bf16 cache, in one run — eager (host launch overhead included) and replayed
from a CUDA graph (the GPU's time alone); on CUDA also the 2-bit decode at other tokens-per-step and warps of the
kernel (rows kivi_2bit_t<tokens>_w<warps>), to choose its defaults.

    python -m harness.benches.bench_kivi [--tokens 4096] [--heads 32] [--head-dim 128] [--group 128]
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from harness.benches.timing import graph_time_ms, print_table, time_ms, write_rows
from harness.probes import storage_bytes
from membench_kernels.kivi import KIVICache, kivi_decode_attention


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, args.heads, args.tokens, args.head_dim)
    k = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    v = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    q = torch.randn(1, args.heads, args.head_dim, generator=gen, device=device, dtype=dtype)
    bf16_bytes = 2 * k.numel() * 2
    def sdpa():
        return F.scaled_dot_product_attention(q[:, :, None], k, v)

    base_ms = time_ms(sdpa, device, repeats=args.repeats)[0]
    base_graph_ms = graph_time_ms(sdpa, device, repeats=args.repeats)
    rows = [{"kernel": "kivi", "variant": "bf16_sdpa", "shape": f"{shape}", "cache_bytes": bf16_bytes,
             "bytes_over_bf16": 1.0, "decode_ms": base_ms, "time_over_bf16": 1.0, "decode_graph_ms": base_graph_ms,
             "graph_time_over_bf16": 1.0 if base_graph_ms else None}]
    exact = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float())[:, :, 0]
    def fill(bits):
        cache = KIVICache(bits=bits, group=args.group, value_group=args.group)
        cache.append(k, v)
        return cache

    for bits in (2, 4):
        quantize_ms = time_ms(partial(fill, bits), device, repeats=max(2, args.repeats // 10))[0]  # the prompt's
        cache = fill(bits)
        median, p20, p80 = time_ms(lambda cache=cache: kivi_decode_attention(q, cache), device, repeats=args.repeats)
        graph_ms = graph_time_ms(lambda cache=cache: kivi_decode_attention(q, cache), device, repeats=args.repeats)
        error = (kivi_decode_attention(q, cache).float() - exact).abs().mean().item()
        size = storage_bytes(cache.tensors())
        rows.append({"kernel": "kivi", "variant": f"kivi_{bits}bit", "shape": f"{shape}", "cache_bytes": size,
                     "bytes_over_bf16": size / bf16_bytes, "decode_ms": median, "decode_ms_p20": p20,
                     "decode_ms_p80": p80, "time_over_bf16": median / base_ms, "mean_abs_error": error, "quantize_ms": quantize_ms,
                     "decode_graph_ms": graph_ms, "graph_time_over_bf16": graph_ms / base_graph_ms if graph_ms else None})
    if device.type == "cuda":  # the decode kernel's shape, for choosing the defaults (64 tokens, 2 warps)
        cache = fill(2)
        for block_tokens in (16, 32, 64, 128):
            for warps in (2, 4, 8):
                def decode(block_tokens=block_tokens, warps=warps):
                    return kivi_decode_attention(q, cache, block_tokens=block_tokens, num_warps=warps)

                graph_ms = graph_time_ms(decode, device, repeats=args.repeats)
                rows.append({"kernel": "kivi", "variant": f"kivi_2bit_t{block_tokens}_w{warps}", "shape": f"{shape}",
                             "decode_ms": time_ms(decode, device, repeats=args.repeats)[0],
                             "decode_graph_ms": graph_ms, "graph_time_over_bf16": graph_ms / base_graph_ms})
    path = write_rows("kivi", rows, device)
    print_table(rows, ["variant", "cache_bytes", "bytes_over_bf16", "quantize_ms", "decode_ms", "time_over_bf16",
                       "decode_graph_ms", "graph_time_over_bf16", "mean_abs_error"])
    print(f"rows: {path}")


if __name__ == "__main__":
    main()
