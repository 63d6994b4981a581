"""Predict a job's GPU memory before running it: `python -m harness.estimate [-m] <the overrides of harness.run>`.

The job is traced without memory (harness.memtrace: the model, the method and two training steps under fake
tensors, the live-tensor probe, a replay of the CUDA caching allocator); no GPU is needed and nothing is allocated.
Printed per job: each phase's peak (load, forward, backward, optimizer step) split into weights, grads, optimizer
state, activations, temporaries, the cuBLAS workspace and the allocator's rounding, then
- estimate_peak: the predicted torch.cuda.max_memory_allocated of the job (the rows' peak_allocated);
- the predicted reserved peak, and the NVML figure: reserved + the CUDA context (CUDA_CONTEXT below).
With several jobs (-m method=a,b,...) a "does it fit?" table follows: per job the peak, whether it fits each GPU of
conf/gpu/ with est.headroom left free, and the largest batch that fits each (from two traces, peak affine in the
batch). docs/estimator.md tells how the estimate is made and how far it is from the committed GPU rows.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

from harness.memtrace import PARTS, PHASES, trace_job

GIB, MIB = 2**30, 2**20
# The CUDA context and the libraries' modules loaded on the device, as NVML counts them for the process beyond the
# caching allocator's reserved bytes: median of nvml_process_peak - peak_reserved over the 199 committed H100/H200
# rows of harness.estimate_check (results/estimate_check.md recomputes it): 758 MiB, range 686-858 MiB.
CUDA_CONTEXT = 758 * MIB
HEADROOM = 0.10  # the share of a GPU's memory the "fits" checks leave free (fragmentation, other processes)


@dataclass
class Estimate:
    phases: dict  # phase -> {"peak": bytes, "parts": {part: bytes}}
    peak: int  # predicted peak allocated (torch.cuda.max_memory_allocated)
    reserved: int  # predicted peak reserved (the allocator's segments)
    nvml: int  # reserved + CUDA_CONTEXT
    live_peak: int  # the live-tensor probe's peak (tensor bytes: what a CPU job's cpu_live_peak measures)
    weights: int
    grads: int
    optimizer_state: int
    activations: int
    batch_size: int

    def row_fields(self) -> dict:
        return {"estimate_peak": self.peak, "estimate_reserved": self.reserved, "estimate_live_peak": self.live_peak,
                "estimate_phases": {k: v["peak"] for k, v in self.phases.items()}}


def estimate(spec, batch_size: int | None = None, device: str = "cuda") -> Estimate:
    """The estimate of job `spec` (harness.schema.JobSpec) at `batch_size` (default: the job's) on `device`."""
    if batch_size is None and spec.train.batch_size == "auto":
        batch_size = 1  # train.batch_size=auto: the estimate of one sequence (fit_table gives the largest batch)
    trace = trace_job(spec, batch_size, device=device)
    phases = {name: {"peak": p.peak, "parts": p.parts} for name, p in trace.phases.items()}
    peak = max(p["peak"] for p in phases.values())
    return Estimate(phases=phases, peak=peak, reserved=trace.reserved_peak, nvml=trace.reserved_peak + CUDA_CONTEXT,
                    live_peak=trace.live_peak, weights=trace.weights, grads=trace.grads,
                    optimizer_state=trace.optimizer_state, activations=trace.activations,
                    batch_size=batch_size or spec.train.batch_size)


def job_estimate(spec, device: str = "cuda") -> dict:
    """The row's estimate fields for job `spec` on `device` (estimate_peak, ...); a job this cannot trace gets
    estimate_error instead, and runs as it would have."""
    try:
        return estimate(spec, device=device).row_fields()
    except Exception as e:  # the estimate must never cost a measurement: its failure is a field of the row
        return {"estimate_peak": None, "estimate_error": f"{type(e).__name__}: {str(e).strip()[:200]}"}


def fits(est: Estimate, memory_bytes: int, headroom: float = HEADROOM) -> bool:
    """The job's NVML figure (reserved + context) leaves `headroom` of the GPU free."""
    return est.nvml <= memory_bytes * (1 - headroom)


def largest_batch(spec, memory_bytes: int, headroom: float = HEADROOM, probes: tuple[int, int] = (1, 8)) -> int:
    """The largest batch whose NVML figure fits (batch_within), from traces at two batch sizes."""
    return batch_within(*(estimate(spec, b) for b in probes), memory_bytes * (1 - headroom), probes)


def batch_within(e1: Estimate, e2: Estimate, budget: float, probes: tuple[int, int] = (1, 8),
                 overhead: int | None = None) -> int:
    """The largest batch b whose every phase fits: peak_p(b) + overhead <= budget, with each phase's peak taken as
    affine in the batch through its peaks in e1, e2 (at batches `probes`) and overhead = the larger NVML - peak gap
    of the two (reserved beyond allocated, and the CUDA context; 0 for a budget of allocated bytes). Per phase,
    because the phase that sets the peak can change with the batch (at batch 1 the end of backward, holding all
    gradients; at a large batch the forward's activations); 0 where batch 1 does not fit."""
    (b1, b2) = probes
    overhead = max(e1.nvml - e1.peak, e2.nvml - e2.peak) if overhead is None else overhead
    best = None
    for phase, p1 in e1.phases.items():
        a, slope = p1["peak"], (e2.phases[phase]["peak"] - p1["peak"]) / (b2 - b1)
        if a + overhead > budget:
            return 0
        fit = b1 + int((budget - overhead - a) // slope) if slope > 0 else None
        best = fit if best is None or (fit is not None and fit < best) else best
    return best if best is not None else b2


@contextmanager
def _as_if_gpu():
    """Plan as for a GPU job on a machine without one: the estimate is of the GPU job."""
    import harness.config as config

    count = config.nvidia_gpu_count
    config.nvidia_gpu_count = lambda: 1
    try:
        yield
    finally:
        config.nvidia_gpu_count = count


def plan_for_gpu(argv: list[str]):
    from harness.config import plan

    given = {a.split("=")[0] for a in argv}
    extra = [] if "run.device" in given else ["run.device=cuda"]
    with _as_if_gpu():
        return plan(argv + extra)


def _gib(value: int) -> str:
    return f"{value / GIB:,.2f}"


def phase_table(est: Estimate) -> str:
    header = ["phase", "peak GiB", *PARTS]
    lines = [header] + [[name, _gib(p["peak"]), *(_gib(p["parts"][k]) for k in PARTS)]
                        for name, p in est.phases.items() if name in PHASES]
    return _grid(lines)


def _grid(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                             strict=True)))
                     for line in lines)


def gpus() -> dict[str, int]:
    """name -> memory_bytes of each GPU of conf/gpu/ that gives its capacity."""
    import yaml

    from harness import CONF_DIR

    out = {}
    for path in sorted((CONF_DIR / "gpu").glob("*.yaml")):
        memory = yaml.safe_load(path.read_text()).get("memory_bytes")
        if memory:
            out[path.stem] = int(memory)
    return out


def fit_table(jobs, headroom: float = HEADROOM, made: dict | None = None) -> str:
    """Per job: peak, NVML figure, fits each GPU (yes/no) and the largest batch that fits it; `made`: job run_id ->
    its estimate, where already made."""
    devices = gpus()
    lines = [["job", "batch", "peak GiB", "nvml GiB", *(f"{g} ({m / GIB:.0f} GiB)" for g, m in devices.items())]]
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for job in jobs:
        est = (made or {}).get(job.run_id) or estimate(job.spec)
        # a job at batch 1 or 8 has that trace already
        e1, e8 = (est if est.batch_size == b else estimate(job.spec, b) for b in (1, 8))
        cells = [f"{'yes' if fits(est, memory, headroom) else 'no'}, max batch "
                 f"{batch_within(e1, e8, memory * (1 - headroom))}" for memory in devices.values()]
        label = " ".join(o for o in job.overrides if o not in shared) or job.spec.method.name
        lines.append([label, str(est.batch_size), _gib(est.peak), _gib(est.nvml), *cells])
    return _grid(lines) + (f"\nfits: predicted NVML figure (reserved + {CUDA_CONTEXT / GIB:.2f} GiB CUDA context) "
                           f"<= {1 - headroom:.0%} of the GPU's memory_bytes; max batch: from traces at batch 1 and "
                           "8, each phase's peak taken as affine in the batch")


def main(argv: list[str] | None = None) -> int:
    from harness.schema import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        jobs = [j for j in plan_for_gpu(argv) if j.repeat == 0]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    made = {}
    for job in jobs:
        est = made[job.run_id] = estimate(job.spec)
        print(f"# {' '.join(job.overrides) or 'defaults'}: batch {est.batch_size}, seq_len {job.spec.train.seq_len}")
        print(phase_table(est))
        print(f"estimate_peak {est.peak:,} B ({_gib(est.peak)} GiB, torch.cuda.max_memory_allocated); reserved "
              f"{_gib(est.reserved)} GiB; NVML {_gib(est.nvml)} GiB; live tensors {_gib(est.live_peak)} GiB\n")
    if len(jobs) > 1:
        print(fit_table(jobs, made=made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
