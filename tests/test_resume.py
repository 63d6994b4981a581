"""A sweep resumes from rows made on another machine (run.resume_from): jobs are named by their config with each text
file named by its content, so a corpus at another path is the same job and an edited corpus is not."""
from __future__ import annotations

import shutil

from tests.helpers import rows_of, run_cli

TINY = ["model=llama_tiny", "dataset=text_file", "dataset.tokenizer=bytes", "train.steps=3", "train.warmup_steps=1",
        "train.seq_len=32", "train.batch_size=2", "train.eval_batches=1", "run.device=cpu", "run.estimate=false"]


def _text(path, extra=""):
    path.parent.mkdir(parents=True)
    path.write_text(("the quick brown fox jumps over the lazy dog\n" * 300) + extra)
    return path


def test_rows_from_another_machine_resume_the_sweep_and_an_edited_corpus_does_not(tmp_path):
    first = _text(tmp_path / "machine_a" / "corpus.txt")
    done = run_cli([*TINY, f"dataset.path={first}"], tmp_path / "a")
    assert done.returncode == 0, done.stderr
    made = rows_of(tmp_path / "a")
    assert [r["status"] for r in made] == ["ok"]

    moved = tmp_path / "machine_b" / "corpus.txt"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    committed = tmp_path / "committed.rows.jsonl"
    shutil.copy(tmp_path / "a" / "adhoc" / "rows.jsonl", committed)
    resumed = run_cli([*TINY, f"dataset.path={moved}", f"run.resume_from=[{committed}]"], tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    assert "1 job(s) already had a row and were not rerun" in resumed.stdout
    assert [r["timestamp"] for r in rows_of(tmp_path / "b")] == [r["timestamp"] for r in made]  # adopted, not rerun

    edited = _text(tmp_path / "machine_c" / "corpus.txt", extra="one more line\n")
    rerun = run_cli([*TINY, f"dataset.path={edited}", f"run.resume_from=[{committed}]"], tmp_path / "c")
    assert rerun.returncode == 0, rerun.stderr
    assert "already had a row" not in rerun.stdout
    assert {r["run_id"] for r in rows_of(tmp_path / "c")}.isdisjoint({r["run_id"] for r in made})
