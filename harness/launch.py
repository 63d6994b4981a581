"""Run one job in its own process and always return one row: ok, oom, timeout, error, diverged or skipped.

The parent never touches CUDA: it writes job.json, starts the job process in a new session (so a timeout kills the
whole process group), waits with a timeout, and turns whatever happened into a row. The job process is forked from
a server that has done the imports once (run.launcher=fork, harness/zygote.py) or is a fresh interpreter running
`python -m harness.worker` (run.launcher=spawn); both run the same worker. With run.parallel > 1 several threads of
the sweep call run_job at once: each thread has its own fork server (one job at a time each, as its protocol
expects), and the job processes the sweep started are not counted as other processes on the GPU.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

from harness import PROJECT_ROOT, ranks
from harness.config import Job
from harness.nvml import visible_handles
from harness.results import write_json_atomic


def _last_log_line(log_path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def gpu_occupants() -> list[int] | None:
    """PIDs of compute processes already on any GPU visible to this process (NVML; None where NVML or a GPU is
    absent)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [p.pid for handle in visible_handles(pynvml)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    except Exception:  # no driver / no GPU: nothing can occupy it
        return None


# Job processes this sweep started (its own jobs side by side on a GPU are not "another process"), the ones still
# running (killed at once when the sweep is interrupted), and whether it was.
_STARTED: set[int] = set()
_RUNNING: set[int] = set()
_STOPPING = threading.Event()


def _running(pid: int) -> None:
    _STARTED.add(pid)
    _RUNNING.add(pid)
    if _STOPPING.is_set():  # interrupted while it was being started
        _kill_group(pid)


def interrupt_jobs() -> None:
    """Kill every job process of the sweep still running (run.parallel > 1: the threads waiting on them then
    report their jobs `interrupted`), and start no more."""
    _STOPPING.set()
    for pid in list(_RUNNING):
        _kill_group(pid)


def reset_interrupt() -> None:
    _STOPPING.clear()


try:  # loaded here, not in the child: a child forked from a threaded parent (run.parallel > 1) must not dlopen
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux: orphans end at their timeout instead
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the parent (thread) dies (a killed sweep leaves no
    orphan job running on, holding the GPU, writing a result nobody reads)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _with_project_path(env: dict) -> dict:
    """env with the project on PYTHONPATH, for a child interpreter started from any working directory."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}


class ForkServerFailed(RuntimeError):
    """The fork server did not start (only this: a RuntimeError raised into the wait, e.g. by a cluster's signal
    handler, is not a reason to fall back to spawn)."""


class Zygote:
    """The launcher's side of the fork server (harness/zygote.py): one per sweep, started on first use."""

    def __init__(self, log_path, ready_timeout_s: float = 600.0):
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "harness.zygote"], cwd=PROJECT_ROOT,
                                         env=_with_project_path(dict(os.environ)),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.buffer = b""
        try:
            ready = self._read(ready_timeout_s)
        except EOFError:  # it died while importing
            ready = None
        if ready != {"ready": True}:
            self.close()
            raise ForkServerFailed(f"the fork server did not start; see {log_path}")

    def _read(self, timeout_s: float | None) -> dict | None:
        """The next message, None when timeout_s passes first; EOFError when the server is gone."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("the fork server exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, job_dir, log_path, env: dict) -> int:
        request = {"job_dir": str(job_dir), "log": str(log_path), "env": env}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise EOFError("the fork server exited") from e
        return self._read(None)["pid"]

    def wait(self, timeout_s: float | None) -> int | None:
        message = self._read(timeout_s)
        return None if message is None else message["returncode"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


_ZYGOTES: dict = {}  # ("server", thread) -> that thread's fork server; "failed" -> why none could start


def _zygote(log_path) -> Zygote:
    # keyed by the thread object, not its ident: a server dies with the thread that started it (PR_SET_PDEATHSIG), and
    # a new thread may get an ended one's ident while that server is being killed (seen after a sweep's base job)
    key = ("server", threading.current_thread())
    server = _ZYGOTES.get(key)
    if server is None or not server.alive():
        server = _ZYGOTES[key] = Zygote(log_path)
    return server


@atexit.register
def stop_servers() -> None:
    """End the fork servers (harness.run calls this after each sweep, so code edits reach the next one)."""
    _ZYGOTES.pop("failed", None)
    for key in [k for k in _ZYGOTES if isinstance(k, tuple)]:
        _ZYGOTES.pop(key).close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended (and was reaped by the fork server) in the meantime
        pass


def _wait_forked(job: Job, log_path, env: dict) -> int | None:
    """Run the job as a child of the fork server; its exit code, or None after a timeout (group killed)."""
    server = _zygote(job.job_dir.parent / "zygote.log")
    pid = server.start(job.job_dir, log_path, env)
    _running(pid)
    try:
        returncode = server.wait(job.spec.run.timeout_s)
    except BaseException:  # Ctrl-C or a kill of the parent: take the child down
        _kill_group(pid)
        raise
    finally:
        _RUNNING.discard(pid)
    if returncode is None:
        _kill_group(pid)
        server.wait(None)  # the server reaps it and reports the kill
    return returncode


def _ranked(job: Job) -> bool:
    """Whether the job runs as ranks of a process group, started by torchrun (harness/ranks.py)."""
    return job.spec.train.distributed != "none"


def _wait_spawned(job: Job, log_path, env: dict) -> int | None:
    """Run the job in a fresh interpreter; its exit code, or None after a timeout (group killed)."""
    with open(log_path, "w") as log:
        command = (ranks.torchrun_command(sys.executable, job.spec.run.nproc, job.job_dir) if _ranked(job)
                   else [sys.executable, "-m", "harness.worker", str(job.job_dir)])
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_with_project_path(env), preexec_fn=_die_with_parent)
        _running(proc.pid)
        try:
            return proc.wait(timeout=job.spec.run.timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:  # after a timeout, Ctrl-C or a kill of the parent: take the child down
            if proc.poll() is None:
                _kill_group(proc.pid)
                proc.wait()
            _RUNNING.discard(proc.pid)


def _config_columns(job: Job) -> dict:
    c, spec = job.config, job.spec
    return {
        "model": spec.model.name, "dataset": spec.dataset.name, "method": spec.method.name,
        "scenario": spec.scenario.name, "gpu": spec.gpu.name, "batch_size": spec.train.batch_size,
        "seq_len": spec.train.seq_len, "steps": spec.train.steps, "warmup_steps": spec.train.warmup_steps,
        "seed": spec.train.seed, "transforms": list(spec.method.transforms),
        "optimizer": (spec.method.optimizer or {}).get("name"), "overrides": list(job.overrides), "config": c,
        "recipe": list(job.recipe),
        # jobs side by side share the device: their times (and device-wide NVML peaks) say nothing about the method
        "parallel": spec.run.parallel, "timing_comparable": spec.run.parallel == 1,
        "distributed": spec.train.distributed, "nproc": spec.run.nproc, "grad_accum": spec.train.grad_accum,
    }


class Interrupted(KeyboardInterrupt):
    """The sweep was interrupted while a job ran; `row` records how far the job got (rerunning resumes it)."""

    def __init__(self, row: dict):
        super().__init__(row["error"])
        self.row = row


def base_row(job: Job, provenance: dict) -> dict:
    """The row's identity, config columns and provenance, before the job runs (status ok until it says otherwise)."""
    return {"run_id": job.run_id, "sweep": job.spec.sweep.name, "repeat": job.repeat,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "status": "ok", "error": None,
            **_config_columns(job), **provenance,
            "deterministic_fields": ["weights", "grads", "optimizer_state", "activations", "cpu_live_peak",
                                     "peak_allocated"]}


def run_job(job: Job, provenance: dict, skip: str | None = None) -> dict:
    """The job's row: run in its own process, or `skipped` for the reason `skip` without starting one."""
    job.job_dir.mkdir(parents=True, exist_ok=True)
    result_path, log_path = job.job_dir / "result.json", job.job_dir / "log.txt"
    result_path.unlink(missing_ok=True)
    write_json_atomic(job.job_dir / "job.json", {"run_id": job.run_id, "repeat": job.repeat, "config": job.config})
    row = base_row(job, provenance)
    if skip:
        return {**row, "status": "skipped", "error": skip}
    occupants = gpu_occupants() if job.spec.run.device != "cpu" else None
    occupants = [pid for pid in occupants or [] if pid not in _STARTED]  # this sweep's own jobs are no intruders
    row["gpu_busy"] = bool(occupants)
    if occupants and job.spec.run.busy_gpu == "refuse":
        return {**row, "status": "skipped",
                "error": f"GPU busy: {len(occupants)} other process(es) {occupants[:5]} (run.busy_gpu=refuse)"}
    # the job's whole environment (a forked job gets it from the request), and its start for startup_s
    env = {**os.environ, "MEMBENCH_LAUNCHED_AT": repr(time.time())}
    launcher = "torchrun" if _ranked(job) else "spawn" if "failed" in _ZYGOTES else job.spec.run.launcher
    for stale in job.job_dir.glob(ranks.RANK_RESULT.format("*")):
        stale.unlink()
    start, returncode, lost, interrupted = time.monotonic(), None, None, False
    try:
        try:
            returncode = (_wait_forked if launcher == "fork" else _wait_spawned)(job, log_path, env)
        except ForkServerFailed as e:  # this and the sweep's other jobs are spawned
            _ZYGOTES["failed"] = str(e)
            print(f"warning: run.launcher=fork: {e}; spawning a fresh interpreter per job instead", file=sys.stderr)
            launcher = "spawn"
            returncode = _wait_spawned(job, log_path, env)
    except EOFError as e:  # the fork server died while the job ran: what became of the job is unknown
        lost = f"run.launcher=fork: {e} (run.launcher=spawn avoids the server)"
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM to the sweep: the job is already killed (the waits' cleanup)
        interrupted = True
    interrupted = interrupted or _STOPPING.is_set()  # run.parallel > 1: the sweep killed it (interrupt_jobs)
    row.update(launcher=launcher, wall_s=round(time.monotonic() - start, 3))
    if interrupted:
        raise Interrupted({**row, "status": "interrupted", "error": (
            f"the sweep was interrupted {row['wall_s']:.0f} s into the job; "
            f"last log line: {_last_log_line(log_path)}")[:400]}) from None
    if lost:
        return {**row, "status": "error", "error": lost}
    if returncode is None:
        return {**row, "status": "timeout", "error": f"no result after run.timeout_s={job.spec.run.timeout_s:g} s; "
                                                      f"last log line: {_last_log_line(log_path)}"[:400]}
    cause = (f"killed by {signal.Signals(-returncode).name}" if returncode < 0
             else f"exited with code {returncode}")
    if _ranked(job):
        result = ranks.merge(ranks.rank_results(job.job_dir, job.spec.run.nproc),
                             f"torchrun {cause}; last log line: {_last_log_line(log_path)}")
        return {**row, **result, "gpu": result.get("gpu", row["gpu"])}
    if result_path.exists():
        result = json.loads(result_path.read_text())
        return {**row, **result, "gpu": result.get("gpu", row["gpu"])}
    return {**row, "status": "error", "error": f"job process {cause} before writing a result; "
                                                f"last log line: {_last_log_line(log_path)}"[:400]}
