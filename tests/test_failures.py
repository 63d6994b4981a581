"""Failure as data: each failure drill leaves one row with its status, and the sweep goes on — with jobs forked
from the server (run.launcher=fork, the default) and with jobs in fresh interpreters (spawn)."""
import pytest

from tests.helpers import FAST, rows_of, run_cli


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_each_failure_becomes_a_row_and_the_sweep_continues(results_dir, launcher):
    proc = run_cli(["-m", "run.inject_fault=raise,segfault,oom,nan_loss,missing_package,none",
                    f"run.launcher={launcher}", *FAST], results_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["config"]["run"]["inject_fault"]: r for r in rows_of(results_dir)}
    assert rows["raise"]["status"] == "error" and "injected fault" in rows["raise"]["error"]
    assert rows["segfault"]["status"] == "error" and "SIGSEGV" in rows["segfault"]["error"]
    assert rows["oom"]["status"] == "oom" and "out of memory" in rows["oom"]["error"]
    assert rows["nan_loss"]["status"] == "diverged" and "nan" in rows["nan_loss"]["error"]
    assert rows["missing_package"]["status"] == "skipped" and "pip install" in rows["missing_package"]["error"]
    assert rows["none"]["status"] == "ok"
    assert rows["oom"]["weights"] > 0, "what was measured before the failure is kept"
    assert "diverged=1" in proc.stdout and "error=2" in proc.stdout and "oom=1" in proc.stdout and "skipped=1" in proc.stdout
    assert {r["launcher"] for r in rows.values()} == {launcher}


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_timeout_kills_the_job_and_leaves_a_timeout_row(results_dir, launcher):
    proc = run_cli(["run.inject_fault=hang", "run.timeout_s=4", f"run.launcher={launcher}", *FAST], results_dir)
    assert proc.returncode == 0
    (row,) = rows_of(results_dir)
    assert row["status"] == "timeout" and "run.timeout_s=4" in row["error"]
    assert "last log line: loaded" in row["error"]  # where it hung: after loading, before the first step
