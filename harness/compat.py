"""The compatibility matrix: every method × {gradient accumulation, DDP, ZeRO-1, FSDP2 ZeRO-2-like, FSDP2 ZeRO-3,
activation checkpointing, layer-wise update, bf16}, each pair run on CPU (gloo, 2 ranks, tiny LLaMA, fp32 unless the
pair is bf16) against the same method in one process without the feature, on the same samples.

    python -m harness.compat                  (writes docs/compatibility.md and docs/compatibility.csv)
    python -m harness.compat --methods adamw,galore   (these methods' cells again; the others' are kept)

A cell is
- ok: it runs, and its loss at every step and its held-out loss after the last step match the reference within the
  feature's tolerance (TOLERANCES: fp32 reorderings of sums for the parallel ones, bf16's rounding for bf16);
- unsupported: planning refuses the pair, with its one-line reason (what a user gets, exit code 2);
- fails: planning accepts it but the job ends with an error (the error is the reason), or the method alone does
  not train in this setting (its loss blows up: DIVERGED), so no difference from it means anything;
- wrong: it runs, but its losses differ from the reference beyond the tolerance (the largest relative difference);
- cuda-only / skipped: the method cannot run on CPU (it needs CUDA), or an optional package is absent;
- n/a: the method already has the feature (checkpointing in adamw_ckpt, layer-wise in galore_layerwise).

Every run is the harness's own job path (harness.worker.execute, with its planning through harness.config.plan),
forked from this process after the imports: one process per single-process run, two per distributed run.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from harness import CONF_DIR, PROJECT_ROOT, ranks
from harness.config import ConfigError, group_options, plan
from harness.results import write_json_atomic

BASE = ["model=llama_tiny", "dataset=synthetic", "run.device=cpu", "train.steps=3", "train.warmup_steps=1",
        "train.seq_len=32", "train.dtype=fp32", "train.lr_schedule=constant", "train.lr_warmup_steps=0",
        "run.live_tensor_probe=false", "run.host_memory_limit_gib=null"]
SMALL, BIG = ["train.batch_size=2", "train.eval_batches=2"], ["train.batch_size=4", "train.eval_batches=1"]
# feature -> (its overrides, the reference's batch, ranks); the reference sees the same samples in one process
FEATURES = {
    "grad_accum": (["train.grad_accum=2"], BIG, 1),
    "ddp": (["train.distributed=ddp", "run.nproc=2"], BIG, 2),
    "zero1": (["train.distributed=zero1", "run.nproc=2"], BIG, 2),
    "fsdp2_zero2": (["train.distributed=fsdp2_zero2", "run.nproc=2"], BIG, 2),
    "fsdp2": (["train.distributed=fsdp2", "run.nproc=2"], BIG, 2),
    "checkpointing": (None, SMALL, 1),  # the method's transforms plus checkpointing (_feature_overrides)
    "layerwise": (["method.loop=layerwise"], SMALL, 1),
    "bf16": (["train.dtype=bf16"], SMALL, 1),
}
# Largest relative difference of a loss from the reference's that still counts as the same training. fp32: sums in
# another order (all-reduce, micro-batches) move a loss by ~1e-6 relative; bf16 rounds every weight to 8 bits.
TOLERANCES = {feature: 1e-3 for feature in FEATURES} | {"bf16": 3e-2}
JOB_TIMEOUT_S = 120
DIVERGED = 1.5  # a reference whose held-out loss ends above this multiple of its first training loss blew up
# Why a pair fails or differs: by a piece of its reason (REASON_NOTES) or by the pair (PAIR_NOTES, for `wrong`
# cells, whose reason is a number); compatibility.md prints the note under the reason.
REASON_NOTES = {
    "got mixed torch.Tensor and DTensor":
        "FSDP2 hands the optimizer its rank's row shard of each parameter and gradient as a DTensor; this optimizer "
        "makes tensors of its own (projection matrices, quantized states, kernel buffers) as plain tensors and mixes "
        "them with the shard. Sharding it needs an optimizer that works per shard; for GaLore and APOLLO, whose "
        "projections are of the whole gradient matrix, a row shard's projection would be another method. DDP and "
        "ZeRO-1 hand it whole tensors and work.",
    "in-place operations that require placement changes":
        "Adafactor factors the second moment into row and column means of each matrix; on a row shard the column "
        "mean needs the other ranks' rows, a redistribution DTensor refuses in place.",
    "killed after":
        "a rank hung in a collective and was killed; not investigated further (the pair passes with "
        "fsdp2_zero2, which keeps the gathered parameters from forward to backward).",
}
PAIR_NOTES = {
    ("apollo_torch", "layerwise"): "apollo-torch seeds each matrix's random projection with the matrix's index "
    "in its optimizer; the layer-wise loop builds one optimizer per matrix, so every matrix gets the first index's "
    "seed and another projection than in the standard loop (matrices of one shape then share a projection).",
    ("apollo_torch_mini", "layerwise"): "as apollo_torch: every matrix gets the first index's seed.",
    ("apollo_torch_mini", "zero1"): "apollo-torch seeds each matrix's random projection with the matrix's index in "
    "its optimizer; under ZeRO-1 each rank's optimizer holds a part of the matrices, so their indices and seeds, "
    "and with them the projections, differ from one process's: another sample of the method, not an error.",
}


def _method_yaml(method: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml"))


def _feature_overrides(method: str, feature: str) -> list[str] | str:
    """The feature's overrides for this method, or the reason the pair is n/a."""
    yaml = _method_yaml(method)
    if feature == "checkpointing":
        transforms = list(yaml.get("transforms") or [])
        if "checkpointing" in transforms:
            return "the method checkpoints already"
        return [f"method.transforms=[{','.join(transforms + ['checkpointing'])}]"]
    if feature == "layerwise" and yaml.get("loop") == "layerwise":
        return "the method updates layer-wise already"
    return FEATURES[feature][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(job_dir: Path, rank: int, nproc: int, port: int) -> None:
    """In a forked child: run the job as one rank (harness.worker.execute) and write its result; never returns."""
    try:
        import torch

        from harness import distributed, worker

        torch.set_num_threads(1)  # two ranks share the cores; results do not depend on it
        if nproc > 1:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port))
        os.dup2(os.open(job_dir / f"log{rank}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(1, 2)
        record = worker.execute(job_dir)
        write_json_atomic(job_dir / ranks.RANK_RESULT.format(rank), record)
        distributed.shutdown()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(0)


def run_job(job, work: Path) -> dict:
    """The job's result (its ranks' results merged), each rank a child forked from this process."""
    job_dir = work / job.run_id
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job_dir / "job.json", {"run_id": job.run_id, "repeat": 0, "config": job.config})
    nproc, port = job.spec.run.nproc if job.spec.train.distributed != "none" else 1, _free_port()
    pids = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            _child(job_dir, rank, nproc, port)
        pids.append(pid)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if os.waitpid(pid, os.WNOHANG) == (0, 0)]
        time.sleep(0.05)
    for pid in pids:  # a rank left waiting for a failed one in a collective
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    results = ranks.rank_results(job_dir, nproc)
    return ranks.merge(results, f"killed after {JOB_TIMEOUT_S} s") if nproc > 1 else (
        results[0] or {"status": "error", "error": f"the job wrote no result (killed after {JOB_TIMEOUT_S} s)"})


def _losses(result: dict) -> list[float]:
    return [loss for _, loss in result.get("train_curve") or []] + [result.get("eval_loss")]


def compare(reference: dict, result: dict, tolerance: float) -> tuple[str, str, float | None]:
    """(status, reason, largest relative difference) of a pair's result against its reference's."""
    if result["status"] == "skipped":
        return "skipped", result.get("error") or "", None
    if result["status"] != "ok":
        return "fails", f"{result['status']}: {result.get('error')}", None
    ours, theirs = _losses(result), _losses(reference)
    if len(ours) != len(theirs) or any(v is None or not math.isfinite(v) for v in ours + theirs):
        return "wrong", f"losses {ours} against the reference's {theirs}", None
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs, strict=True))
    if worst > tolerance:
        return "wrong", f"a loss differs from the single-process run's by {worst:.2%} (tolerance {tolerance:.2%})", worst
    return "ok", "", worst


def _plan_one(overrides: list[str]):
    """The one job of these overrides; a later override of a key replaces an earlier one."""
    by_key = {o.split("=", 1)[0]: o for o in overrides}
    (job,) = plan(list(by_key.values()))
    return job


def matrix(methods: list[str], work: Path, log=print) -> list[dict]:
    """One entry per (method, feature): method, feature, status, reason, max_rel_diff."""
    cells, references = [], {}
    for method in methods:
        for feature, (_, reference_batch, _) in FEATURES.items():
            overrides = _feature_overrides(method, feature)
            cell = {"method": method, "feature": feature, "status": "n/a", "reason": "", "max_rel_diff": None}
            if isinstance(overrides, str):
                cells.append({**cell, "reason": overrides})
                continue
            common = BASE + [f"method={method}", f"run.results_dir={work}/rows"]
            try:
                reference_job = _plan_one(common + reference_batch)
            except ConfigError as e:
                status = "cuda-only" if "needs CUDA" in str(e) else "unsupported"
                cells.append({**cell, "status": status, "reason": f"the method alone: {e}"})
                continue
            try:
                job = _plan_one(common + SMALL + overrides)
            except ConfigError as e:
                cells.append({**cell, "status": "unsupported", "reason": str(e)})
                continue
            key = tuple(reference_batch) + (method,)
            if key not in references:
                references[key] = run_job(reference_job, work)
            reference = references[key]
            if reference["status"] != "ok":
                status = "skipped" if reference["status"] == "skipped" else "fails"
                cells.append({**cell, "status": status, "reason": f"the method alone: {reference.get('error')}"})
                continue
            first, last = reference["train_curve"][0][1], reference.get("eval_loss")
            if last is not None and last > DIVERGED * first:  # differences of a blown-up run say nothing
                cells.append({**cell, "status": "fails", "reason": f"the method alone does not train here: loss "
                              f"{first:.2f} at the first step, {last:.2f} held out after the last"})
                continue
            status, reason, worst = compare(reference, run_job(job, work), TOLERANCES[feature])
            cells.append({**cell, "status": status, "reason": reason, "max_rel_diff": worst})
            log(f"{method:<22} {feature:<14} {status:<11} {reason[:120]}")
    return cells


def _markdown(cells: list[dict], command: str) -> str:
    methods = list(dict.fromkeys(c["method"] for c in cells))
    notes: dict[str, int] = {}
    table = {}
    for c in cells:
        mark = c["status"]
        if c["status"] not in ("ok",) and c["reason"]:
            why = (PAIR_NOTES.get((c["method"], c["feature"])) if c["status"] == "wrong" else None) or next(
                (note for piece, note in REASON_NOTES.items() if piece in c["reason"]), "")
            number = notes.setdefault(c["reason"] + (f" *Why:* {why}" if why else ""), len(notes) + 1)
            mark = f"{mark} [{number}]"
        table[(c["method"], c["feature"])] = mark
    lines = ["# Compatibility matrix", "",
             f"Generated by `{command}` (harness/compat.py, whose docstring defines each status). Each pair ran on "
             "CPU: a tiny LLaMA (llama_tiny), 3 steps of 2 × 32 tokens per rank, fp32 unless bf16, 2 gloo ranks for "
             "the parallel strategies, against the same method in one process on the same samples (the parallel "
             "ones and gradient accumulation against one process with the whole batch of 4). `ok` means every "
             "step's loss and the held-out loss after the last step agree within "
             f"{TOLERANCES['ddp']:.1%} (bf16: {TOLERANCES['bf16']:.0%}). Machine-readable: compatibility.csv.", "",
             "Statuses: `unsupported` planning refuses the pair (exit code 2, the reason below); `fails` planning "
             "accepts it but the job ends with an error, or the method alone does not train in this setting; "
             "`wrong` it runs but its losses differ beyond the tolerance; `cuda-only` the method cannot run on CPU, "
             "so the pair is unchecked; `skipped` an optional package is absent; `n/a` the method has the feature "
             "already. The bf16 column is a smoke check (it runs, and stays near fp32 for 3 steps).", "",
             "| method | " + " | ".join(FEATURES) + " |", "|---|" + "---|" * len(FEATURES)]
    lines += [f"| {m} | " + " | ".join(table[(m, f)] for f in FEATURES) + " |" for m in methods]
    lines += ["", "## Reasons", ""] + [f"{n}. {reason}" for reason, n in notes.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: every conf/method)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs"), help="folder for compatibility.{md,csv}")
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else [  # training methods: an inference one has no optimizer
        m for m in group_options("method") if "optimizer" in _method_yaml(m)]
    import harness.worker  # noqa: F401  (imported once here; every run is a child forked after it)

    with tempfile.TemporaryDirectory(prefix="membench-compat-") as work:
        cells = matrix(methods, Path(work))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.methods and (out / "compatibility.csv").exists():  # a subset replaces its methods' cells, keeps the rest
        with open(out / "compatibility.csv", newline="") as f:
            kept = [row for row in csv.DictReader(f) if row["method"] not in methods]
        order = {m: i for i, m in enumerate(group_options("method"))}
        cells = sorted(kept + cells, key=lambda c: order.get(c["method"], len(order)))
    with open(out / "compatibility.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "feature", "status", "reason", "max_rel_diff"])
        writer.writeheader()
        writer.writerows(cells)
    (out / "compatibility.md").write_text(_markdown(cells, "python -m harness.compat"))
    print(json.dumps({s: sum(c["status"] == s for c in cells) for s in sorted({c["status"] for c in cells})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
