"""Failure as data: each failure drill leaves one row with its status, and the sweep goes on — with jobs forked
from the server (run.launcher=fork, the default) and with jobs in fresh interpreters (spawn)."""
from collections import Counter

import pytest

from tests.helpers import FAST, rows_of, run_cli

# Every fault through the fork server; through spawn (a fresh interpreter per job, seconds of imports each) the
# faults that end the child process itself.
FAULTS = {"fork": "raise,segfault,oom,nan_loss,missing_package,none", "spawn": "segfault,oom,none"}
EXPECTED = {"raise": ("error", "injected fault"), "segfault": ("error", "SIGSEGV"), "oom": ("oom", "out of memory"),
            "nan_loss": ("diverged", "nan"), "missing_package": ("skipped", "pip install")}  # status, the error says


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_each_failure_becomes_a_row_and_the_sweep_continues(results_dir, launcher):
    proc = run_cli(["-m", f"run.inject_fault={FAULTS[launcher]}", f"run.launcher={launcher}", *FAST], results_dir)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the sweep went on, and says which jobs did not end ok
    rows = {r["config"]["run"]["inject_fault"]: r for r in rows_of(results_dir)}
    assert set(rows) == set(FAULTS[launcher].split(","))
    failed = {f: EXPECTED[f] for f in rows if f != "none"}
    for fault, (status, says) in failed.items():
        assert rows[fault]["status"] == status and says in rows[fault]["error"], rows[fault]
    assert rows["none"]["status"] == "ok"
    assert rows["oom"]["weights"] > 0, "what was measured before the failure is kept"
    counts = Counter(status for status, _ in failed.values())
    assert all(f"{status}={n}" in proc.stdout for status, n in counts.items()), proc.stdout
    assert {r["launcher"] for r in rows.values()} == {launcher}
    last = proc.stderr.strip().splitlines()[-1]
    skipped = "; a skipped job measured nothing, so it counts" if "skipped" in counts else ""
    assert last.startswith(f"{len(failed)} of {len(rows)} jobs did not end ok (exit code 1{skipped}): "), last
    assert last.endswith("run.retry_failed=true reruns them")
    for fault, (status, _) in failed.items():
        assert f"run.inject_fault={fault} [{status}]" in last
    assert "inject_fault=none" not in last


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_timeout_kills_the_job_and_leaves_a_timeout_row(results_dir, launcher):
    # the clock runs from the job's start: a fresh interpreter (spawn) first imports torch and transformers, which
    # took over 4 s on a busy CPU host (its last log line was an import warning, not "loaded")
    timeout_s = {"fork": 4, "spawn": 15}[launcher]
    proc = run_cli(["run.inject_fault=hang", f"run.timeout_s={timeout_s}", f"run.launcher={launcher}", *FAST],
                   results_dir)
    assert proc.returncode == 1 and "[timeout]" in proc.stderr.strip().splitlines()[-1]
    (row,) = rows_of(results_dir)
    assert row["status"] == "timeout" and f"run.timeout_s={timeout_s}" in row["error"]
    assert "last log line: loaded" in row["error"]  # where it hung: after loading, before the first step


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_a_terminated_sweep_leaves_an_interrupted_row_for_the_running_job(results_dir, launcher):
    """`kill` or an outer time limit (SIGTERM) while a job runs: the job is killed and its row says how far it got."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    cmd = [sys.executable, "-m", "harness.run", "run.inject_fault=hang", "run.timeout_s=120",
           f"run.launcher={launcher}", *FAST, f"run.results_dir={results_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("loaded" in p.read_text() for p in results_dir.glob("adhoc/*/log.txt")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "resumes" in stderr
    (row,) = rows_of(results_dir)
    assert row["status"] == "interrupted" and "last log line: loaded" in row["error"] and row["launcher"] == launcher


def test_an_interrupted_job_is_run_again_on_resume(tmp_path):
    from harness.config import plan
    from harness.results import append_row
    from harness.run import run_sweep

    (job,) = plan([*FAST, f"run.results_dir={tmp_path}"])
    append_row(job.sweep_dir / "rows.jsonl", {"run_id": job.run_id, "status": "interrupted", "error": "killed"})
    (row,) = run_sweep([job], progress=False)
    assert row["status"] == "ok" and [r["status"] for r in rows_of(tmp_path)] == ["interrupted", "ok"]


def test_retry_failed_reruns_only_the_jobs_not_ok_and_resume_names_the_code_that_made_kept_rows(tmp_path, capsys):
    from harness.config import plan
    from harness.provenance import git_state
    from harness.results import append_row
    from harness.run import run_sweep

    def jobs(retry):
        return plan(["-m", "train.seed=0,1", *FAST, f"run.results_dir={tmp_path}", f"run.retry_failed={retry}"])

    failed, good = jobs("false")
    older = {"git_sha": "0123456789abcdef", "git_dirty": True}
    append_row(failed.sweep_dir / "rows.jsonl", {"run_id": failed.run_id, "status": "error", "error": "x", **older})
    append_row(good.sweep_dir / "rows.jsonl", {"run_id": good.run_id, "status": "ok", **older})
    assert [r["status"] for r in run_sweep([failed, good], progress=False)] == ["error", "ok"]  # nothing reruns
    out = capsys.readouterr().out
    assert "2 job(s) already had a row and were not rerun" in out
    current = git_state()["git_sha"][:10]
    assert f"note: 2 of the 2 kept rows were made by other code than the current {current}" in out
    assert "2 by 0123456789 (dirty)" in out

    retried = jobs("true")
    assert [j.run_id for j in retried] == [failed.run_id, good.run_id]  # an operational key: the same jobs
    assert [r["status"] for r in run_sweep(retried, progress=False)] == ["ok", "ok"]
    assert "1 job(s) already had a row" in capsys.readouterr().out
    assert [r["status"] for r in rows_of(tmp_path)] == ["error", "ok", "ok"]  # the failed job ran again, once
