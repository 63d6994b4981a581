"""Shared pieces of the kernel benchmarks: timing (warm-up, synchronize, median of repeats) and result rows
with provenance, appended to results/runs/kernels/<name>.rows.jsonl (copy to results/<gpu>/kernels/ to commit)."""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from harness import PROJECT_ROOT
from harness.provenance import cuda_state, git_state, host_state
from harness.results import append_row
from membench_kernels.common import cuda_time_ms


def parse_timing_args(parser, argv) -> tuple:
    """The options every training-step bench shares (--load-ms, --profile; it defines --device and --dtype), parsed:
    (args, device, dtype)."""
    parser.add_argument("--load-ms", type=float, default=150.0,
                        help="ms of bf16 matmuls before every timed call (timing.matmul_load); 0: none")
    parser.add_argument("--profile", nargs="+", metavar="VARIANT",
                        help="print these variants' per-kernel time tables instead of benchmarking")
    args = parser.parse_args(argv)
    return args, torch.device(args.device), {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]


def time_ms(fn, device: torch.device, warmup: int = 3, repeats: int = 10,
            before_each=None) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of fn(), after warm-up, each call bracketed by a synchronize."""
    return interleaved_time_ms({"fn": fn}, device, warmup, repeats, before_each)["fn"]


def interleaved_time_ms(fns: dict, device: torch.device, warmup: int = 3, repeats: int = 10,
                        before_each=None, in_stream: bool = False) -> dict[str, tuple[float, float, float]]:
    """(median, p20, p80) milliseconds of each fn() by name, timed in rounds that call every fn once (each call
    bracketed by a synchronize): a drift of the GPU's clock during the run (boost, heat) then weighs on every
    variant alike instead of on whichever ran last. before_each() runs (untimed) before every timed call: with
    matmul_load, every call starts from the same clock instead of from its predecessor's.
    in_stream (CUDA): each call is timed between two CUDA events recorded just before and after it, with no
    synchronize after before_each(), so the host prepares and queues the call while the GPU still runs the load, as
    it queues an LM head while the model's layers run (triton.testing.do_bench times this way). The time is then
    the GPU's, plus any wait on a host that falls behind or synchronizes inside fn; the default also counts the
    host's work before the call's first kernel and after its last."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before_each is not None:
                before_each()
            if in_stream and cuda:
                times[name].append(cuda_time_ms(fn))
                continue
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1000)
    summary = {}
    for name, values in times.items():
        quantile = statistics.quantiles(values, n=5) if len(values) > 1 else [values[0]] * 4
        summary[name] = statistics.median(values), quantile[0], quantile[-1]
    return summary


def step_fields(timing: tuple[float, float, float], name: str = "step_ms") -> dict:
    """A result row's <name>, <name>_p20 and <name>_p80 from a (median, p20, p80) timing."""
    return dict(zip((name, f"{name}_p20", f"{name}_p80"), timing, strict=True))


def matmul_load(device: torch.device, ms: float = 150.0, size: int = 8192):
    """A callable that keeps the GPU busy with bf16 matmuls (size², out= one kept buffer) for about `ms`, as a
    model's layers do before its LM head or optimizer step; None off CUDA or for ms = 0. A power-capped GPU's clock
    follows its recent power draw: on an H200, torch.compile's CE step at LLaMA-3 shapes took 34.5 ms after 500 ms
    idle, 36.0 after cut-cross-entropy's step, 38.5 after its own and 40.2 after 40 ms of matmuls (sm clock at the
    start 1980, 1665, 1580 and 1560 MHz). After 40 ms of load the start clock still ranged 1230–1815 MHz by what
    ran before it, after 150 ms 1410–1605 and after 400 ms 1455–1500: timed after this load, every variant starts
    near the loaded clock whatever ran before it."""
    if device.type != "cuda" or not ms:
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    one = time_ms(lambda: torch.matmul(a, a, out=out), device, repeats=5)[0]
    count = max(1, math.ceil(ms / one))

    def load():
        for _ in range(count):
            torch.matmul(a, a, out=out)

    return load


def graph_time_ms(fn, device: torch.device, repeats: int = 10) -> float | None:
    """Median milliseconds of fn() captured once in a CUDA graph and replayed: the GPU's time without the host's
    launch overhead (what a serving stack that captures its decode step pays). None off CUDA."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compilation, allocations) outside the capture
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, device, repeats=repeats)[0]


def allocated_bytes(device: torch.device) -> int | None:
    """torch.cuda.memory_allocated after a synchronize (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def peak_bytes(fn, device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated during fn() above what was allocated before it (None off CUDA)."""
    base = allocated_bytes(device)
    if base is None:
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def profile_table(fn, device: torch.device, warmup: int = 3, rows: int = 12) -> str:
    """torch.profiler's per-kernel table of one fn() after warm-up, sorted by device time: where the time goes; on
    CUDA also how long the GPU sat idle between the kernels (kernel_timeline)."""
    for _ in range(warmup):
        fn()
    activities = [torch.profiler.ProfilerActivity.CPU] + \
        ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=70)
    if device.type != "cuda":
        return table
    with tempfile.TemporaryDirectory() as folder:
        prof.export_chrome_trace(f"{folder}/trace.json")
        events = json.loads(Path(f"{folder}/trace.json").read_text())["traceEvents"]
    return f"{table}\n{kernel_timeline([e for e in events if e.get('cat') == 'kernel'])}"


def kernel_timeline(kernels: list[dict]) -> str:
    """One line on a call's GPU kernels (trace events: ts, dur in µs): their busy time, the span from the first's
    start to the last's end, and the idle time between them with its longest gaps — time the kernels' table cannot
    show (a host that cannot keep up, a synchronization)."""
    if not kernels:
        return "no GPU kernels"
    kernels = sorted(kernels, key=lambda e: e["ts"])
    busy = sum(e["dur"] for e in kernels)
    span = max(e["ts"] + e["dur"] for e in kernels) - kernels[0]["ts"]
    gaps = sorted((b["ts"] - a["ts"] - a["dur"] for a, b in zip(kernels, kernels[1:], strict=False)), reverse=True)
    longest = ", ".join(f"{gap:.0f}" for gap in gaps[:3] if gap > 0)
    return (f"{len(kernels)} kernels: busy {busy / 1000:.2f} ms of a {span / 1000:.2f} ms span, idle "
            f"{(span - busy) / 1000:.2f} ms between them (longest gaps, µs: {longest or '-'})")


def write_rows(name: str, rows: list[dict], device: torch.device, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or PROJECT_ROOT / "results" / "runs" / "kernels"
    path = out_dir / f"{name}.rows.jsonl"
    provenance = {**git_state(), **host_state(), **(cuda_state() if device.type == "cuda" else {"gpu": "cpu"})}
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for row in rows:
        identity = json.dumps({k: row.get(k) for k in ("kernel", "variant", "shape")}, sort_keys=True)
        append_row(path, {"run_id": hashlib.sha256((identity + stamp).encode()).hexdigest()[:16], "sweep": name,
                          "timestamp": stamp, "status": row.pop("status", "ok"), "error": row.pop("error", None),
                          "device": device.type, **row, **provenance})
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[str(r.get(c, "-")) if not isinstance(r.get(c), float) else f"{r[c]:.4g}" for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
