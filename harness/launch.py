"""Run one job in its own process and always return one row: ok, oom, timeout, error, diverged or skipped.

The parent never touches CUDA: it writes job.json, starts `python -m harness.worker` in a new session (so a
timeout kills the whole process group), waits with a timeout, and turns whatever happened into a row.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from harness import PROJECT_ROOT
from harness.config import Job
from harness.results import write_json_atomic


def _last_log_line(log_path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def gpu_occupants() -> list[int] | None:
    """PIDs of compute processes already on any visible GPU (NVML; None where NVML or a GPU is absent)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pids = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            pids += [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        return pids
    except Exception:  # no driver / no GPU: nothing can occupy it
        return None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the parent dies (a killed sweep leaves no orphan
    job running on, holding the GPU, writing a result nobody reads)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: orphans end at their timeout instead
        pass


def _config_columns(job: Job) -> dict:
    c, spec = job.config, job.spec
    return {
        "model": spec.model.name, "dataset": spec.dataset.name, "method": spec.method.name,
        "scenario": spec.scenario.name, "gpu": spec.gpu.name, "batch_size": spec.train.batch_size,
        "seq_len": spec.train.seq_len, "steps": spec.train.steps, "warmup_steps": spec.train.warmup_steps,
        "seed": spec.train.seed, "transforms": list(spec.method.transforms),
        "optimizer": spec.method.optimizer.get("name"), "overrides": list(job.overrides), "config": c,
    }


def run_job(job: Job, provenance: dict) -> dict:
    job.job_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = job.job_dir / "result.json", job.job_dir / "log.txt"
    result_path.unlink(missing_ok=True)
    write_json_atomic(job.job_dir / "job.json", {"run_id": job.run_id, "repeat": job.repeat, "config": job.config})
    row = {"run_id": job.run_id, "sweep": job.spec.sweep.name, "repeat": job.repeat,
           "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "status": "ok", "error": None,
           **_config_columns(job), **provenance,
           "deterministic_fields": ["weights", "grads", "optimizer_state", "activations", "cpu_live_peak",
                                    "peak_allocated"]}
    occupants = gpu_occupants() if job.spec.run.device != "cpu" else None
    row["gpu_busy"] = bool(occupants)
    if occupants and job.spec.run.busy_gpu == "refuse":
        return {**row, "status": "skipped",
                "error": f"GPU busy: {len(occupants)} other process(es) {occupants[:5]} (run.busy_gpu=refuse)"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
           "MEMBENCH_LAUNCHED_AT": repr(time.time())}  # the child's startup_s: interpreter, imports, CUDA state
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.worker", str(job.job_dir)], cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=_die_with_parent)
        try:
            returncode = proc.wait(timeout=job.spec.run.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
        except BaseException:  # Ctrl-C or a kill of the parent: take the child down, write no row
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    row["wall_s"] = round(time.monotonic() - start, 3)
    if returncode is None:
        return {**row, "status": "timeout", "error": f"no result after run.timeout_s={job.spec.run.timeout_s:g} s"}
    if result_path.exists():
        result = json.loads(result_path.read_text())
        return {**row, **result, "gpu": result.get("gpu", row["gpu"])}
    cause = (f"killed by {signal.Signals(-returncode).name}" if returncode < 0
             else f"exited with code {returncode}")
    return {**row, "status": "error", "error": f"job process {cause} before writing a result; "
                                                f"last log line: {_last_log_line(log_path)}"[:400]}
