"""A job of several ranks, seen from the sweep process (no torch here): the plan-time checks of run.nproc and
train.distributed, the torchrun command that starts the ranks, and the merge of the ranks' results into one row.

Each rank writes `result.rank<R>.json` (harness/worker.py); the merged row takes, for every memory figure, the maximum
over the ranks (an OOM happens on one device, so the largest rank is the one that decides), keeps the per-rank values
in `per_rank`, says `world_size`, and reports throughput for the whole job (every rank's tokens over the slowest
rank's step time). The rank that failed first makes the row's status and error (`rank 1: RuntimeError: …`); one that left
no result (torchrun stopped it after another rank failed, or it was killed) is named in the error.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.results import MEMORY
from harness.schema import ConfigError

# The memory figures of a row: MEMORY's plus the per-phase and per-stage peaks (peak_allocated_forward, live_end_...).
_MEMORY_PREFIXES = ("peak_", "live_", "allocated_", "nvml_", "cpu_live_")
_MEAN_KEYS = ("train_loss", "train_loss_first", "eval_loss", "initial_eval_loss")  # each rank's loss on its own batch
_MAX_KEYS = ("step_ms", "step_ms_p20", "step_ms_p80", "startup_s", "load_s", "data_s", "train_s", "eval_s")

RANK_RESULT = "result.rank{}.json"


def check(spec, gpus_visible: int | None) -> None:
    """Plan-time checks of a job's ranks; gpus_visible None where the job runs elsewhere (a cluster node)."""
    run, train, method = spec.run, spec.train, spec.method
    if run.nproc > 1 and train.distributed == "none":
        raise ConfigError(f"run.nproc={run.nproc} needs train.distributed (ddp, zero1, fsdp2_zero2 or fsdp2): with "
                          "none every rank would train a replica of its own")
    if run.nproc > 1 and run.parallel > 1:
        raise ConfigError(f"run.nproc={run.nproc} with run.parallel={run.parallel}: a job of several ranks takes the "
                          "host's devices; run its sweep with run.parallel=1")
    if gpus_visible is not None and run.device == "cuda" and run.nproc > gpus_visible:
        raise ConfigError(f"run.nproc={run.nproc} but {gpus_visible} GPU(s) are visible; one rank per GPU")
    reasons = [_ACCUM_UNSUPPORTED.get(method.loop) if train.grad_accum > 1 else None,
               _DISTRIBUTED_UNSUPPORTED.get((method.loop, train.distributed))]
    for reason in filter(None, reasons):
        raise ConfigError(reason.format(grad_accum=train.grad_accum, distributed=train.distributed))
    if "int8_weights" in method.transforms and (train.grad_accum > 1 or train.distributed != "none"):
        raise ConfigError(f"int8_weights with train.grad_accum={train.grad_accum} train.distributed="
                          f"{train.distributed}: its INT8 layers apply the update inside their own backward, on each "
                          "micro-batch's and each rank's own gradient (measured: the loss off by 0.5-1.4 % after 3 "
                          "steps); allowed with grad_accum=1 and distributed=none only")
    if train.distributed != "none" and getattr(train, "save_checkpoint", False):
        raise ConfigError(f"train.save_checkpoint with train.distributed={train.distributed}: the model is saved from "
                          "one process (save_pretrained); run the job that saves it with train.distributed=none")


# Why a loop cannot take part (a ConfigError at planning; docs/compatibility.md lists them).
_ACCUM_UNSUPPORTED = {
    "layerwise": "train.grad_accum={grad_accum} with method.loop=layerwise: the layer-wise update steps each parameter "
                 "inside backward and frees its gradient, so no gradient is left to accumulate over micro-batches",
    "zeroth_order": "train.grad_accum={grad_accum} with method.loop=zeroth_order: a zeroth-order step runs no backward "
                    "and keeps no gradient to accumulate",
}
_LAYERWISE_DDP = ("train.distributed={distributed} with method.loop=layerwise: the layer-wise update steps a parameter "
                  "in its gradient hook, on the rank's own gradient, before DDP's all-reduce of it (measured: the "
                  "loss off by 0.1 % after 3 steps); FSDP2 reduces first (train.distributed=fsdp2 or fsdp2_zero2)")
_DISTRIBUTED_UNSUPPORTED = {
    ("layerwise", "ddp"): _LAYERWISE_DDP,
    ("layerwise", "zero1"): _LAYERWISE_DDP,
    **{("zeroth_order", strategy): "train.distributed={distributed} with method.loop=zeroth_order: a zeroth-order "
       "step computes no gradient for the ranks to reduce; each rank would update its copy from its own loss"
       for strategy in ("ddp", "zero1", "fsdp2_zero2", "fsdp2")},
}


def torchrun_command(python: str, nproc: int, job_dir) -> list[str]:
    """torchrun on this node (a free port of its own: --standalone), one worker per rank; its agent stops the
    other ranks when one exits with an error."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "harness.worker", str(job_dir)]


def rank_results(job_dir: Path, nproc: int) -> list[dict | None]:
    """Each rank's result (None where it wrote none)."""
    out = []
    for rank in range(nproc):
        path = job_dir / RANK_RESULT.format(rank)
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            out.append(None)
    return out


def _is_memory(key: str, value) -> bool:
    return (key in MEMORY or key.startswith(_MEMORY_PREFIXES)) and isinstance(value, int) and not isinstance(
        value, bool)


def merge(results: list[dict | None], cause_if_missing: str) -> dict:
    """One row's result from the ranks' results, in rank order (see the module's docstring)."""
    present = [(rank, r) for rank, r in enumerate(results) if r is not None]
    if not present:
        return {"status": "error", "error": f"no rank wrote a result ({cause_if_missing})"[:400],
                "world_size": len(results)}
    merged = dict(present[0][1])
    merged.pop("rank", None)
    for key in {k for _, r in present for k, v in r.items() if _is_memory(k, v)}:
        values = [r.get(key) if r is not None else None for r in results]
        known = [v for v in values if isinstance(v, int)]
        merged[key] = max(known) if known else None
        if key in MEMORY:
            merged.setdefault("per_rank", {})[key] = values
    for key, pick in [(k, max) for k in _MAX_KEYS] + [(k, min) for k in ("tokens_per_s", "mfu")]:
        values = [r[key] for _, r in present if isinstance(r.get(key), (int, float))]
        if values:
            merged[key] = pick(values)  # the job's step is as long as its slowest rank's
    for key in _MEAN_KEYS:
        values = [r[key] for _, r in present if isinstance(r.get(key), (int, float))]
        if values and len(values) == len(present):
            merged[key] = sum(values) / len(values)
    curves = [r.get("train_curve") for _, r in present]
    if all(curves) and len({len(c) for c in curves}) == 1:
        merged["train_curve"] = [[points[0][0], sum(p[1] for p in points) / len(points)] for points in zip(*curves, strict=True)]
    if "step_peak_allocated" in merged:
        per_step = [r.get("step_peak_allocated") or [] for _, r in present]
        merged["step_peak_allocated"] = [max(v) for v in zip(*per_step, strict=False)]  # a rank that logged fewer steps ends the list
    merged["world_size"] = len(results)
    merged["per_rank"] = {**merged.get("per_rank", {}), "status": [r["status"] if r else None for r in results]}
    failed = [(rank, r) for rank, r in present if r["status"] != "ok"]
    missing = [rank for rank, r in enumerate(results) if r is None]
    if failed:
        # the first rank to fail is the cause; the others typically failed in a collective waiting for it
        rank, first = min(failed, key=lambda item: item[1].get("ended_at", float("inf")))
        others = f" (then {len(failed) - 1} other rank(s) failed too)" if len(failed) > 1 else ""
        merged.update(status=first["status"], error=f"rank {rank}: {first['error']}"[:360] + others)
    elif missing:
        merged.update(status="error", error=f"rank(s) {missing} wrote no result ({cause_if_missing})"[:400])
    return merged
