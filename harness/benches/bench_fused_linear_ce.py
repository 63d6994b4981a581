"""Benchmark: fused linear cross-entropy, forward + backward, against torch.compile of the plain
F.cross_entropy(h @ W.T, y), eager PyTorch, Liger-Kernel and cut-cross-entropy, measured in one run.

Memory beyond the inputs is torch.cuda.max_memory_allocated during forward + backward minus what was allocated
before; the lower bound is the two gradients, (N + V) · D · 2 bytes. What a variant's first call leaves allocated
for good (workspaces, caches: eager's 64 MiB at vocab 128256 on an H200) is reported beside it
(kept_after_first_call), not in the peak. Time is the median of repeats (synchronized), timed in rounds that run
every variant once (a drift of the GPU's clock weighs on all alike), each call after --load-ms of bf16 matmuls
(timing.matmul_load: as a model's layers precede its head, so that every variant starts from the loaded,
power-capped clock instead of its predecessor's; 0: none, each call follows the one before). On CUDA each variant is
timed twice, in two sets of rounds: step_ms from the host's clock around a synchronized call (the host's work before
the first kernel and after the last counts), stream_ms between CUDA events, the call queued behind the load
(timing.interleaved_time_ms in_stream: the host's work overlaps the load, as it overlaps a model's layers).
Writes rows to results/runs/kernels/fused_linear_ce.rows.jsonl and prints the table with ratios.

    python -m harness.benches.bench_fused_linear_ce [--tokens 8192] [--hidden 4096] [--vocab 128256 32000 256000]
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from harness.benches.timing import (
    allocated_bytes,
    interleaved_time_ms,
    matmul_load,
    parse_timing_args,
    peak_bytes,
    print_table,
    profile_table,
    step_fields,
    write_rows,
)
from membench_kernels.fused_linear_ce import fused_linear_cross_entropy, tile_shape
from methods.fused_ce import BUDGET, FILTER_EPS


def plain(h, w, y):
    # the upcast keeps the loss in fp32, as ours is (from bf16 logits the loss is bf16: 11.75 against 11.7747); it
    # left compile's time and peak as they were (1.004 ×, the same bytes, on an H200)
    return F.cross_entropy((h @ w.T).float(), y, ignore_index=-100)


def memory_tile(h, w, y, rows):
    """Memory mode with `rows` tokens per tile (the default is TILE_ROWS) at the same tile budget."""
    tile = tile_shape(h.shape[0], w.shape[0], w.shape[1], BUDGET["memory"], h.element_size(), tile_rows=rows)
    return fused_linear_cross_entropy(h, w, y, tile=tile)


def variants(device: torch.device) -> dict:
    out = {"eager": plain, **{f"ours_{mode}": partial(fused_linear_cross_entropy, budget_fraction=fraction)
                              for mode, fraction in BUDGET.items()},
           # cut-cross-entropy's default threshold (bf16 eps / 32), for a like-for-like time with its default
           "ours_memory_filtered": partial(fused_linear_cross_entropy, budget_fraction=BUDGET["memory"],
                                           filter_eps=FILTER_EPS)}
    if device.type == "cuda":
        out |= {f"ours_memory_r{rows}": partial(memory_tile, rows=rows) for rows in (1024, 4096)}
        out["torch_compile"] = torch.compile(plain)
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            out["liger"] = lambda h, w, y: liger(w, h, y)
        except ImportError as e:
            out["liger"] = f"skipped: {e}"
        try:
            from cut_cross_entropy import linear_cross_entropy

            out["cut_cross_entropy"] = lambda h, w, y: linear_cross_entropy(h, w, y)
            # its default skips vocabulary blocks whose gradient is below bf16 eps / 32 (filter_eps="high"): with
            # these nearly uniform logits that is almost all of them; the exact gradient, like ours by default:
            out["cut_cross_entropy_exact"] = lambda h, w, y: linear_cross_entropy(h, w, y, filter_eps=None)
        except ImportError as e:
            out["cut_cross_entropy"] = out["cut_cross_entropy_exact"] = f"skipped: {e}"
    return out


def inputs(n, d, v, dtype, device, input_scale):
    gen = torch.Generator(device=device).manual_seed(0)
    h = (torch.randn(n, d, generator=gen, device=device) * input_scale).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen, device=device) * input_scale).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    y[::97] = -100
    return h, w, y


def measure(fns: dict, n, d, v, dtype, device, repeats, input_scale=0.05, profile=(), load_ms=150.0) -> list[dict]:
    """One row per variant at one shape, all on the same inputs: each variant's peak memory alone, then the times
    in interleaved rounds (interleaved_time_ms). profile: print these variants' kernel tables instead."""
    h, w, y = inputs(n, d, v, dtype, device, input_scale)
    shape = {"kernel": "fused_linear_ce", "shape": f"{n}x{d}x{v}", "tokens": n, "hidden": d, "vocab": v,
             "dtype": str(dtype).removeprefix("torch."), "bound_bytes": (n + v) * d * 2, "input_scale": input_scale,
             "load_ms": load_ms}
    rows, steps = {}, {}
    for name, fn in fns.items():
        rows[name] = row = {**shape, "variant": name}
        if isinstance(fn, str):
            row.update(status="skipped", error=fn)
            continue

        def step(fn=fn):
            h.grad = w.grad = None
            fn(h, w, y).backward()

        if profile:
            if name in profile:
                print(f"--- {name}, {row['shape']}\n{profile_table(step, device)}")
            continue
        try:
            before = allocated_bytes(device)
            step()  # compilation and autotuning stay out of the peak
            h.grad = w.grad = None
            if before is not None:  # what the first call left allocated for good: e.g. a cuBLAS workspace
                row["kept_after_first_call"] = allocated_bytes(device) - before
            row["peak_beyond_inputs"] = peak = peak_bytes(step, device)
            if peak is not None:
                row["peak_over_bound"] = peak / row["bound_bytes"]
            steps[name] = step
        except torch.OutOfMemoryError as e:
            row.update(status="oom", error=str(e).splitlines()[0])
        h.grad = w.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    load = matmul_load(device, load_ms) if steps else None  # nothing to time: --profile
    # wall time (synchronized: the host's work before the first kernel counts), then on CUDA in-stream time
    clocks = {"step_ms": ("time_over_compile", False)}
    if device.type == "cuda":
        clocks["stream_ms"] = ("stream_over_compile", True)
    for field, (ratio, in_stream) in clocks.items():
        for name, timing in interleaved_time_ms(steps, device, warmup=2, repeats=repeats, before_each=load,
                                                in_stream=in_stream).items():
            rows[name].update(step_fields(timing, field))
        base = rows.get("torch_compile", {}).get(field)
        for row in rows.values():
            if base and field in row:
                row[ratio] = row[field] / base
    return list(rows.values())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, nargs="+", default=[128256, 32000, 256000])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # 0.05 gives logits of std 0.16 at hidden 4096 (nearly uniform: gradient filters skip almost every block);
    # 0.22 gives std ~3, peaked like a trained head's, where they skip far less
    parser.add_argument("--input-scale", type=float, default=0.05, help="std of the random hidden states and weight")
    args, device, dtype = parse_timing_args(parser, argv)
    rows = []
    for vocab in args.vocab:
        rows += measure(variants(device), args.tokens, args.hidden, vocab, dtype, device, args.repeats,
                        args.input_scale, args.profile or (), args.load_ms)
    if args.profile:
        return
    path = write_rows("fused_linear_ce", rows, device)
    print_table(rows, ["vocab", "input_scale", "load_ms", "variant", "status", "step_ms", "time_over_compile",
                       "stream_ms", "stream_over_compile",
                       "peak_beyond_inputs", "bound_bytes", "peak_over_bound", "kept_after_first_call"])
    print(f"rows: {path}")


if __name__ == "__main__":
    main()
