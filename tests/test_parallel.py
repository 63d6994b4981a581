"""run.parallel=N: up to N jobs of a sweep at once, each its own process; rows say their timing is not comparable,
the sweep's own jobs on a GPU do not count as other processes, and Ctrl-C leaves `interrupted` rows."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

from harness.config import plan
from harness.launch import _STARTED, run_job
from tests.helpers import FAST, ROOT, rows_of, run_cli


def _start(row) -> float:
    return datetime.fromisoformat(row["timestamp"]).timestamp()


def test_two_jobs_at_once_append_every_row_and_say_timing_is_not_comparable(results_dir):
    proc = run_cli(["-m", "run.parallel=2", "method=adamw,sgd,adafactor", *FAST], results_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_of(results_dir)
    assert sorted(r["method"] for r in rows) == ["adafactor", "adamw", "sgd"]
    assert all(r["status"] == "ok" and r["parallel"] == 2 and r["timing_comparable"] is False for r in rows)
    assert "status counts: ok=3" in proc.stdout and "3/3" in proc.stderr  # the summary and the progress bar
    again = run_cli(["-m", "run.parallel=2", "method=adamw,sgd,adafactor", *FAST], results_dir)
    assert again.returncode == 0 and "3 job(s) already had a row" in again.stdout  # resume, as one at a time


def test_jobs_overlap_in_time_with_two_at_once_and_not_with_one(results_dir):
    """Two jobs that hang until their timeout: side by side they start within seconds of each other; one at a time
    the second starts after the first's timeout."""
    hang = ["-m", "train.seed=0,1", "run.inject_fault=hang", "run.timeout_s=5", *FAST]
    for parallel, sweep in ((2, "side"), (1, "serial")):
        proc = run_cli([*hang, f"run.parallel={parallel}", f"sweep.name={sweep}"], results_dir)
        assert proc.returncode == 1, proc.stderr[-2000:]
    side, serial = rows_of(results_dir, "side"), rows_of(results_dir, "serial")
    assert [r["status"] for r in side + serial] == ["timeout"] * 4
    assert abs(_start(side[0]) - _start(side[1])) < 4
    assert abs(_start(serial[0]) - _start(serial[1])) >= 4.5
    assert serial[0]["timing_comparable"] is True and side[0]["timing_comparable"] is False


def test_the_sweeps_own_jobs_on_the_gpu_are_not_other_processes(results_dir, monkeypatch):
    monkeypatch.setattr("harness.launch.gpu_occupants", lambda: [4242])
    monkeypatch.setattr("harness.launch._STARTED", {*_STARTED, 4242})  # a sibling job this sweep started
    fast = [a for a in FAST if not a.startswith("run.device")]
    (job,) = plan(["run.busy_gpu=refuse", "run.parallel=2", "run.device=auto", f"run.results_dir={results_dir}",
                   *fast])
    row = run_job(job, {"git_sha": "test"})
    assert row["gpu_busy"] is False and row["status"] == "ok", row["error"]


def test_an_interrupt_kills_the_running_jobs_and_their_rows_say_interrupted(results_dir):
    cmd = [sys.executable, "-m", "harness.run", "-m", "train.seed=0,1,2", "run.inject_fault=hang", "run.timeout_s=300",
           "run.parallel=2", *FAST, f"run.results_dir={results_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = results_dir / "adhoc"
    deadline = time.monotonic() + 120
    while len(list(logs.glob("*/log.txt"))) < 2 and time.monotonic() < deadline:  # both jobs have started
        time.sleep(0.5)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    rows = rows_of(results_dir)
    assert len(rows) == 2 and all(r["status"] == "interrupted" for r in rows), rows
