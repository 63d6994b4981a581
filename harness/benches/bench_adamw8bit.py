"""Benchmark: one optimizer step over all parameters of a LLaMA model (default LLaMA-1b shapes), for torch's fused
AdamW (moments in the parameter dtype), our 8-bit AdamW (Triton kernel), and the reference 8-bit optimizers where installed
(bitsandbytes AdamW8bit, torchao AdamW8bit). Reports step time (median of repeats, ratio to torch fused, all in one
run; torch's, ours and the references timed in interleaved rounds, so that a drift of the GPU's clock weighs on all
alike, each step after --load-ms of matmuls as after a backward pass: timing.matmul_load; 0: none) and
optimizer-state bytes per parameter (storages, subclasses through their inner tensors). The kernel's option grid
(ours_kernel_*) is timed one variant at a time, each interleaved with torch's step: its ratio is to torch's time in
those rounds (torch_step_ms_in_pair).

    python -m harness.benches.bench_adamw8bit [--model llama_1b] [--dtype bf16] [--repeats 20]
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
import yaml

from harness import CONF_DIR
from harness.benches.timing import (
    interleaved_time_ms,
    matmul_load,
    parse_timing_args,
    print_table,
    profile_table,
    step_fields,
    write_rows,
)
from harness.probes import optimizer_state_tensors, storage_bytes
from membench_kernels.adamw8bit import NUM_WARPS, ROWS
from methods.adamw8bit import AdamW8bit


def llama_shapes(model: str) -> list[tuple[int, ...]]:
    c = yaml.safe_load((CONF_DIR / "model" / f"{model}.yaml").read_text())
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    per_layer = [(h, h)] * 4 + [(f, h), (f, h), (h, f)] + [(h,), (h,)]
    return [(v, h)] + per_layer * c["num_hidden_layers"] + [(h,), (v, h)]


def kernel_grid() -> list[dict]:
    """Blocks per program × warps, the table's key width (8 bits: one table line per half octave), streaming loads
    on/off (_l1: θ, g and codes cached in L1 beside the tables), the gathers by tl.load (_tlload: Triton's own
    layout for them, and conversions to it) and the binary search. The default comes first, a control timed as the
    grid is."""
    shapes = [(ROWS, NUM_WARPS)] + [s for s in [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 4), (8, 8),
                                                (16, 8)] if s != (ROWS, NUM_WARPS)]
    grid = [{"nearest": "table", "rows": r, "num_warps": w} for r, w in shapes]
    grid += [{"nearest": "table", "rows": ROWS, "num_warps": NUM_WARPS, **extra} for extra in
             ({"stream": False}, {"key_bits": (8, 8)}, {"key_bits": (8, 8), "stream": False},
              {"gather_asm": False})]
    return grid + [{"nearest": "binary", "rows": r, "num_warps": w} for r, w in ((1, 1), (4, 4))]


def _reference_optimizers() -> dict:
    out = {}
    try:
        import bitsandbytes as bnb

        out["bnb_adamw8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-4)
    except ImportError as e:
        out["bnb_adamw8bit"] = f"skipped: {e}"
    try:
        from torchao.optim import AdamW8bit as TorchaoAdamW8bit

        out["torchao_adamw8bit"] = lambda ps: TorchaoAdamW8bit(ps, lr=1e-4)
    except ImportError as e:
        out["torchao_adamw8bit"] = f"skipped: {e}"
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama_1b")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, device, dtype = parse_timing_args(parser, argv)
    shapes = llama_shapes(args.model)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    variants = {"torch_adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=device.type == "cuda"),
                "ours_adamw8bit": lambda ps: AdamW8bit(ps, lr=1e-4), **_reference_optimizers()}
    if device.type == "cuda":  # the kernel's other options (default: table, 6/7 key bits, stream, ROWS, NUM_WARPS)
        for options in kernel_grid():
            name = "ours_kernel_{nearest}_r{rows}_w{num_warps}".format(**options) + \
                ("_k8" if options.get("key_bits") else "") + ("" if options.get("stream", True) else "_l1") + \
                ("" if options.get("gather_asm", True) else "_tlload")
            variants[name] = partial(AdamW8bit, lr=1e-4, kernel_options=options)
    rows, steps = [], {}  # torch's, ours and the references: timed in interleaved rounds, alive together
    load = None if args.profile else matmul_load(device, args.load_ms)  # --profile times nothing
    for name, factory in variants.items():
        row = {"kernel": "adamw8bit", "variant": name, "model": args.model, "dtype": args.dtype,
               "shape": f"{len(shapes)} tensors, {n_params} params", "n_params": n_params,
               "load_ms": args.load_ms}
        rows.append(row)
        if isinstance(factory, str):
            row.update(status="skipped", error=factory)
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, device=device, dtype=dtype)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=dtype)
        if args.profile:
            if name in args.profile:
                print(f"--- {name}\n{profile_table(factory(params).step, device)}")
            continue
        try:
            optimizer = factory(params)
            optimizer.step()  # the state exists from the first step on
            state = storage_bytes(optimizer_state_tensors(optimizer))
            row.update(optimizer_state=state, state_bytes_per_param=state / n_params)
            if name.startswith("ours_kernel_"):  # the grid, one option set at a time (all alive would not fit),
                # each interleaved with torch's step: its ratio is to torch's time in the same rounds
                pair = interleaved_time_ms({"torch": steps["torch_adamw_fused"], name: optimizer.step}, device,
                                           warmup=2, repeats=args.repeats, before_each=load)
                row.update(step_fields(pair[name]), torch_step_ms_in_pair=pair["torch"][0],
                           ratio_to_torch_fused=pair[name][0] / pair["torch"][0])
                del optimizer
            else:
                steps[name] = optimizer.step
        except torch.OutOfMemoryError as e:
            row.update(status="oom", error=str(e).splitlines()[0])
        del params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    by_name = {r["variant"]: r for r in rows}
    for name, timing in interleaved_time_ms(steps, device, warmup=2, repeats=args.repeats, before_each=load).items():
        by_name[name].update(step_fields(timing))
    if args.profile:
        return
    base = next(r["step_ms"] for r in rows if r["variant"] == "torch_adamw_fused")
    for r in rows:
        if "step_ms" in r:
            r.setdefault("ratio_to_torch_fused", r["step_ms"] / base)
    path = write_rows("adamw8bit", rows, device)
    print_table(rows, ["variant", "load_ms", "status", "step_ms", "ratio_to_torch_fused", "state_bytes_per_param"])
    print(f"rows: {path}")


if __name__ == "__main__":
    main()
