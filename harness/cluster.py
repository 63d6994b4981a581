"""Sweeps on a SLURM cluster (launcher=slurm): the planned jobs go to SLURM as one job array through submitit, the
library behind Hydra's submitit launcher, with that launcher's keys (conf/launcher/slurm.yaml).

The controller (this process) plans and validates every job first, exactly as a local sweep does, holds the sweep
folder's lock, submits the jobs that have no row yet, and waits. On the node, each array task runs the job as a local
sweep would (harness.launch.run_job: its own process, run.timeout_s, every outcome a row) and writes the row to
`<job>/row.json` by an atomic rename, which shared file systems (NFS, Lustre) keep atomic where O_APPEND from several
nodes is not. Only the controller appends to rows.jsonl, as each task ends.

Cluster failures become rows: a task that ends without writing one (SLURM's time limit after the requeues, a node
failure, a preemption after its requeues, an out-of-memory kill of the whole task) gets a row from its SLURM state
(CLUSTER_STATES). Requeue: each task is a submitit Checkpointable, so a preemption or time-limit signal requeues it
(launcher.max_num_timeout time limits at most); it runs again from the start, which is right for a benchmark job.
Resume after a lost controller: rerunning the same command first merges every `row.json` the cluster wrote into
rows.jsonl, then submits only the jobs that still have no row, so nothing that finished runs again.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import submitit
from tqdm import tqdm

from harness.launch import base_row, run_job, stop_servers
from harness.provenance import git_state
from harness.results import SweepRefused, append_row, read_rows, sweep_lock, write_json_atomic

# SLURM's end state of a task that wrote no row -> the row's status. interrupted: the job did not get to run to its
# end for reasons of the cluster, not of the method, so a resumed sweep runs it again.
CLUSTER_STATES = {
    "TIMEOUT": "timeout", "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom", "PREEMPTED": "interrupted",
    "NODE_FAIL": "interrupted", "CANCELLED": "interrupted", "REQUEUED": "interrupted", "BOOT_FAIL": "error",
    "FAILED": "error", "INTERRUPTED": "interrupted",
}
# conf/launcher/slurm.yaml key -> submitit parameter (generic ones unprefixed, as AutoExecutor takes them)
_PARAMETERS = {
    "timeout_min": "timeout_min", "nodes": "nodes", "tasks_per_node": "tasks_per_node",
    "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "partition": "slurm_partition",
    "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
    "additional_parameters": "slurm_additional_parameters", "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s", "setup": "slurm_setup",
}


class ClusterTask(submitit.helpers.Checkpointable):
    """What one array task runs: the job, as a local sweep runs it, its row written to `<job>/row.json`. As a
    Checkpointable it is requeued on preemption or a time limit (submitit resubmits the same call)."""

    def __call__(self, job, provenance: dict) -> dict:
        try:
            row = run_job(job, provenance)
        except submitit.core.utils.UncompletedJobError as e:  # the time limit's signal after the last requeue
            launcher = job.spec.launcher
            row = {**base_row(job, provenance), "status": "timeout", "launcher": f"submitit:{launcher.cluster}",
                   "error": f"launcher.timeout_min={launcher.timeout_min} reached after launcher.max_num_timeout="
                            f"{launcher.max_num_timeout} requeues ({e})"[:400]}
        finally:
            stop_servers()
        write_json_atomic(job.job_dir / "row.json", row)
        return row


def executor(jobs, sweep_dir: Path):
    """A submitit executor for the sweep's launcher settings (one launcher per sweep: planning checks that)."""
    spec = jobs[0].spec.launcher
    folder = Path(spec.submitit_folder) if spec.submitit_folder else sweep_dir / ".submitit"
    try:
        requeues = {f"{spec.cluster}_max_num_timeout": spec.max_num_timeout} if spec.cluster != "debug" else {}
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster=spec.cluster, **requeues)
    except RuntimeError as e:  # no srun / sbatch here
        raise SweepRefused(f"launcher.cluster={spec.cluster}: {e} (launcher.cluster=local runs the same path on "
                           "this machine)") from None
    gpus = spec.gpus_per_node
    if gpus is None:
        gpus = 0 if jobs[0].spec.run.device == "cpu" else max(job.spec.run.nproc for job in jobs)
    values = {_PARAMETERS[key]: getattr(spec, key) for key in _PARAMETERS}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v not in (None, {}, ())}
    ex.update_parameters(name=spec.job_name or f"membench-{jobs[0].spec.sweep.name}", gpus_per_node=gpus, **values)
    return ex


def _merge_cluster_rows(jobs, done: dict) -> list:
    """Rows the cluster wrote (`<job>/row.json`) that rows.jsonl lacks (a controller lost before it appended them):
    appended now. Returns the jobs they belong to."""
    merged = []
    for job in jobs:
        path = job.job_dir / "row.json"
        if job.run_id in done or job.spec.run.force or not path.exists():
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):  # torn or unreadable: the job runs again
            continue
        if row.get("run_id") == job.run_id and row.get("status") != "interrupted":
            append_row(job.sweep_dir / "rows.jsonl", row)
            done[job.run_id] = row
            merged.append(job)
    return merged


def _rerun(job, previous: dict | None) -> bool:
    run = job.spec.run
    return previous is None or run.force or (run.retry_failed and previous.get("status") != "ok")


def failure_row(job, provenance: dict, cluster_job) -> dict:
    """The row of an array task that ended without writing one, from its SLURM state."""
    try:
        row = json.loads((job.job_dir / "row.json").read_text())
        if row.get("run_id") == job.run_id:
            return row  # it wrote its row, then failed on the way out
    except (OSError, ValueError):
        pass
    state = str(cluster_job.state)
    error = cluster_job.exception()
    detail = " ".join(str(error).split())[:200] if error else ""
    status = CLUSTER_STATES.get(state.split()[0].upper() if state else "", "error")
    return {**base_row(job, provenance), "status": status, "launcher": f"submitit:{job.spec.launcher.cluster}",
            "cluster_job_id": cluster_job.job_id,
            "error": f"cluster job {cluster_job.job_id} ended {state} without a row: {detail}"[:400]}


def run_sweep(jobs, progress: bool = True) -> list[dict]:
    """Submit the jobs without a row as one array, wait, append each row as its task ends; every job's row."""
    provenance = git_state()
    with ExitStack() as stack:
        sweep_dirs = sorted({job.sweep_dir for job in jobs})
        for sweep_dir in sweep_dirs:
            stack.enter_context(sweep_lock(sweep_dir))
        done = {r["run_id"]: r for d in sweep_dirs for r in read_rows(d / "rows.jsonl")}
        done = {run_id: r for run_id, r in done.items() if r.get("status") != "interrupted"}
        merged = _merge_cluster_rows(jobs, done)
        todo = [job for job in jobs if _rerun(job, done.get(job.run_id))]
        kept = len(jobs) - len(todo)
        if kept:
            print(f"{kept} job(s) already had a row and were not resubmitted"
                  + (f" ({len(merged)} of them merged from the rows the cluster wrote)" if merged else ""))
        ex = executor(todo, sweep_dirs[0]) if todo else None
        for job in todo:
            job.job_dir.mkdir(parents=True, exist_ok=True)
            (job.job_dir / "row.json").unlink(missing_ok=True)  # an old row must not stand in for this run's
        submitted = _submit(ex, todo, sweep_dirs[0], provenance) if todo else []
        bar = stack.enter_context(tqdm(total=len(todo), desc="cluster", unit="job", disable=not progress))
        by_id = {cluster_job.job_id: job for cluster_job, job in submitted}
        for cluster_job in submitit.helpers.as_completed([c for c, _ in submitted], poll_frequency=2):
            job = by_id[cluster_job.job_id]
            try:
                row = cluster_job.result()
            except Exception:  # the task ended without returning a row: see failure_row
                row = failure_row(job, provenance, cluster_job)
                write_json_atomic(job.job_dir / "row.json", row)
            row["cluster_job_id"] = cluster_job.job_id
            append_row(job.sweep_dir / "rows.jsonl", row)
            done[job.run_id] = row
            bar.write(f"[{row['status']}] {' '.join(job.overrides) or 'defaults'} (cluster job {cluster_job.job_id})"
                      + (f": {row['error']}" if row.get("error") else ""))
            bar.update(1)
    return [done[job.run_id] for job in jobs]


def _submit(ex, todo, sweep_dir: Path, provenance: dict) -> list:
    """(submitit job, job) of each job, submitted as one array; the ids are kept in <sweep>/submitted.json."""
    with ex.batch():
        cluster_jobs = [ex.submit(ClusterTask(), job, provenance) for job in todo]
    print(f"submitted {len(cluster_jobs)} job(s) to {todo[0].spec.launcher.cluster} as one array; if this process "
          "is lost, the same command merges what finished and resubmits the rest")
    write_json_atomic(sweep_dir / "submitted.json", {job.run_id: c.job_id for c, job in zip(cluster_jobs, todo, strict=True)})
    return list(zip(cluster_jobs, todo, strict=True))
