"""The file system's edges: Hydra's glob over a config group, names longer than the file system allows, a results
folder that fills up or turns read-only mid-sweep (rows kept, no temp or empty file, one line, exit 3), and one sweep
at a time per sweep folder (a lock)."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import results
from harness.config import plan
from harness.results import read_rows, write_json_atomic
from tests.helpers import FAST, ROOT, rows_of, run_cli


def _methods(args, results_dir):
    return sorted(job.spec.method.name for job in plan(["-m", *args, *FAST, f"run.results_dir={results_dir}"]))


def test_glob_expands_against_the_groups_options_as_hydra_does(results_dir):
    assert _methods(["method=glob([sg*,adaf*])"], results_dir) == ["adafactor", "sgd"]
    assert _methods(["method=glob(adamw*,exclude=[adamw8bit,adamw_*_ce,adamw_act_*,adamw_*_offload,adamw_layerwise])"],
                    results_dir) == ["adamw", "adamw_ckpt"]
    assert _methods(["method=glob(sgd)", "train.seed=0,1"], results_dir) == ["sgd", "sgd"]


def test_a_long_override_value_gives_a_job_folder_the_file_system_accepts(tmp_path, results_dir):
    """A data file 600 bytes deep: the job folder's name, made from the overrides, stays within NAME_MAX."""
    folder = tmp_path.joinpath(*["d" * 200] * 3)
    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 2000)
    fast = [a for a in FAST if not a.startswith("dataset.")]  # a text file has no token counts to set
    (job,) = plan(["dataset=text_file", f"dataset.path={folder / 'corpus.txt'}", *fast, f"run.results_dir={results_dir}"])
    assert len(str(folder).encode()) > 600 and str(folder) in " ".join(job.overrides)
    assert len(job.job_dir.name.encode()) <= os.pathconf(tmp_path, "PC_NAME_MAX")


class _Failing:
    """The os module as harness.results sees it; once `armed`, every write fails with `code` (ENOSPC: the disk is
    full; EROFS: the folder turned read-only) — after creating the file, which the writer must then remove."""

    def __init__(self, code):
        self.code, self.armed = code, False

    def __getattr__(self, name):
        return getattr(os, name)

    def _check(self):
        if self.armed:
            raise OSError(self.code, os.strerror(self.code))

    def write(self, fd, data):
        self._check()
        return os.write(fd, data)

    def fsync(self, fd):
        self._check()
        return os.fsync(fd)


def _leftovers(folder):
    """Temp files and empty files or folders under `folder`."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or (p.is_file() and p.stat().st_size == 0)
            or (p.is_dir() and not any(p.iterdir()))]


@pytest.mark.parametrize("moment", ["job folder", "row"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_folder_that_fills_up_or_turns_read_only_mid_sweep_stops_the_sweep_cleanly(
        results_dir, monkeypatch, capsys, code, moment):
    """Writes fail from the third job on: when its folder is written, or when its row is appended."""
    from harness import run

    failing = _Failing(code)
    monkeypatch.setattr(results, "os", failing)
    started, appended = [], []

    def fake_job(job, provenance):  # what run_job writes first, then a row (no process: the sweep loop is tested)
        started.append(job)
        failing.armed = moment == "job folder" and len(started) == 3
        job.job_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job.job_dir / "job.json", {"run_id": job.run_id})
        return {"run_id": job.run_id, "status": "ok", "repeat": job.repeat, "overrides": list(job.overrides)}

    def append(path, row):
        failing.armed = failing.armed or len(appended) == 2
        results.append_row(path, row)
        appended.append(row)

    monkeypatch.setattr(run, "run_job", fake_job)
    monkeypatch.setattr(run, "append_row", append)
    rows_path = results_dir / "adhoc" / "rows.jsonl"
    exit_code = run.main(["-m", "train.seed=0,1,2,3", *FAST, f"run.results_dir={results_dir}"])
    err = capsys.readouterr().err
    assert exit_code == 3 and len(started) == 3
    (line,) = [ln for ln in err.splitlines() if "error" in ln]
    assert line.startswith("error: the sweep stopped") and os.strerror(code) in line and "Traceback" not in err
    assert len(appended) == 2 and [r["run_id"] for r in read_rows(rows_path)] == [r["run_id"] for r in appended]
    assert rows_path.read_bytes().endswith(b"}\n")
    assert not _leftovers(results_dir)
    assert len(list((results_dir / "adhoc").glob("*-r0"))) == 2 + (moment == "row")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_really_full_disk_mid_sweep_keeps_the_rows_written_and_says_so(small_tmpfs, monkeypatch, capsys):
    """Two real jobs; the disk is filled to the last byte after the first row."""
    from harness import run

    def append_then_fill_the_disk(path, row):
        results.append_row(path, row)
        with open(small_tmpfs / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC

    monkeypatch.setattr(run, "append_row", append_then_fill_the_disk)
    results_dir = small_tmpfs / "results"
    code = run.main(["-m", "train.seed=0,1", *FAST, f"run.results_dir={results_dir}"])
    err = capsys.readouterr().err
    assert code == 3 and "No space left on device" in err and "Traceback" not in err
    (row,) = read_rows(results_dir / "adhoc" / "rows.jsonl")
    assert row["status"] == "ok"
    # the fork server's log is empty where its imports printed no warning, failure or not
    assert not [p for p in _leftovers(results_dir) if p.name != "zygote.log"]


def test_a_second_sweep_on_the_same_folder_refuses_naming_the_first_and_a_killed_one_leaves_no_lock(results_dir):
    first = subprocess.Popen([sys.executable, "-m", "harness.run", "run.inject_fault=hang", "run.timeout_s=300", *FAST,
                              f"run.results_dir={results_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock = results_dir / "adhoc" / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    try:
        second = run_cli(["method=sgd", *FAST], results_dir)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.strip().splitlines() == [
        f"error: sweep folder {results_dir / 'adhoc'} is in use by another sweep (PID {first.pid} holds {lock}); "
        "wait for it to end, or pick another sweep.name or run.results_dir"]
    third = run_cli(["method=sgd", *FAST], results_dir)  # the kernel dropped the killed sweep's lock
    assert third.returncode == 0, third.stderr[-2000:]
    assert [r["method"] for r in rows_of(results_dir)] == ["sgd"]
