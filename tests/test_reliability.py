"""Nothing lost: SIGKILL of a running sweep at several moments, then a resume, gives every job exactly once;
a killed job is a row; the same config twice gives identical deterministic bytes; a busy GPU is flagged or refused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.config import plan
from harness.launch import run_job
from harness.results import read_rows
from tests.helpers import FAST, ROOT, rows_of, run_cli

SWEEP = ["-m", "method=adamw,sgd,adafactor", "train.seed=0,1", *FAST]


def _job_processes(results_dir) -> list[int]:
    """PIDs of live processes working for this results folder: a spawned job names its job folder on the command
    line, but a forked job (harness/zygote.py, the default launcher) and the fork server carry the server's command
    line; every one of them writes its log into the folder, so an open file or an argument under it is the mark."""
    folder = os.path.realpath(results_dir)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace").split("\0")
            files = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:  # it ended while being looked at
            continue
        if any(path == folder or path.startswith(folder + os.sep) for path in [*cmdline, *files]):
            pids.append(int(entry))
    return pids


def _no_job_processes_within(results_dir, seconds: float) -> list[int]:
    """[] once no process works for results_dir; the PIDs still there after `seconds` otherwise. A killed process
    takes a moment to go; a job that escaped its parent's death runs on for seconds (at least its startup)."""
    deadline = time.monotonic() + seconds
    while (pids := _job_processes(results_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _described(pids: list[int]) -> str:
    """PID, state, parent and command line of each process, for a failure message."""
    lines = []
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid} (state {stat[0]}, parent {stat[1]}): {cmdline[:120]}")
        except OSError:
            lines.append(f"{pid} (gone since)")
    return "; ".join(lines)


def _raw_lines(path):
    return path.read_bytes().split(b"\n") if path.exists() else []


def _wait_for_rows(path, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for line in _raw_lines(path) if line.strip()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {count} rows")


def test_sigkill_at_several_moments_then_resume_runs_every_job_exactly_once(results_dir):
    """Kill points: during the first job (before any row); right after a row was appended; in the middle of a job.
    Each is reached by watching the rows file, so the test does not depend on how fast the machine is."""
    rows_path = results_dir / "adhoc" / "rows.jsonl"
    kill_points = [(0, 1.0), (1, 0.0), (2, 0.7)]  # (rows to wait for, then seconds more)
    for rows_before_kill, extra in kill_points:
        proc = subprocess.Popen([sys.executable, "-m", "harness.run", *SWEEP, f"run.results_dir={results_dir}"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_rows(rows_path, rows_before_kill)
        time.sleep(extra)
        if rows_before_kill:  # the fork server is up by now: the check must see it (and any job) before the kill
            assert set(_job_processes(results_dir)) - {proc.pid}, "the sweep's job processes are invisible"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        orphans = _no_job_processes_within(results_dir, 0.5)
        assert not orphans, (f"killed at {rows_before_kill} row(s) + {extra} s, still running (PR_SET_PDEATHSIG): "
                             f"{_described(orphans)}")
        assert all(json.loads(line) for line in _raw_lines(rows_path) if line.strip()), "a torn line"
    done_before = len(read_rows(rows_path))
    assert 2 <= done_before < 6
    final = run_cli(SWEEP, results_dir)
    assert final.returncode == 0, final.stderr[-2000:]
    rows = rows_of(results_dir)
    assert len(rows) == 6 and len({r["run_id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows)
    assert f"{done_before} job(s) already had a row" in final.stdout


def test_a_killed_job_leaves_an_error_row(results_dir):
    proc = run_cli(["run.inject_fault=kill", *FAST], results_dir)
    assert proc.returncode == 1
    (row,) = rows_of(results_dir)
    assert row["status"] == "error" and "SIGKILL" in row["error"]


def test_same_config_twice_gives_identical_deterministic_bytes(results_dir):
    proc = run_cli(["run.repeats=2", *FAST], results_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = rows_of(results_dir)
    assert (a["repeat"], b["repeat"]) == (0, 1) and a["run_id"] != b["run_id"]
    for key in ("weights", "grads", "optimizer_state", "activations", "cpu_live_peak", "train_loss", "eval_loss"):
        assert a[key] == b[key], key
    assert all(a[k] == b[k] == 0 for k in ("seed_torch", "seed_numpy", "seed_python", "data_order_seed"))
    assert "peak_reserved" not in a["deterministic_fields"] and "cpu_live_peak" in a["deterministic_fields"]


@pytest.mark.parametrize("policy,status", [("refuse", "skipped"), ("flag", "ok")])
def test_busy_gpu_is_flagged_or_refused(policy, status, results_dir, monkeypatch):
    monkeypatch.setattr("harness.launch.gpu_occupants", lambda: [4242])
    fast = [a for a in FAST if not a.startswith("run.device")]
    (job,) = plan([f"run.busy_gpu={policy}", "run.device=auto", f"run.results_dir={results_dir}", *fast])
    row = run_job(job, {"git_sha": "test"})
    assert row["gpu_busy"] is True and row["status"] == status
    if policy == "refuse":
        assert "GPU busy" in row["error"] and "4242" in row["error"]
