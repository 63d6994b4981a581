"""Run the harness CLI the way a user does (a subprocess) and read what it wrote."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.results import read_rows

ROOT = Path(__file__).resolve().parent.parent
# Small and fast on CPU: a few steps of the tiny LLaMA on a small synthetic corpus.
FAST = ["train.steps=4", "train.warmup_steps=2", "train.seq_len=64", "train.batch_size=4", "train.eval_batches=2",
        "dataset.train_tokens=20000", "dataset.eval_tokens=4096", "run.device=cpu", "run.estimate=false"]


def run_cli(args: list[str], results_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.run", *args, f"run.results_dir={results_dir}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rows_of(results_dir: Path, sweep: str = "adhoc") -> list[dict]:
    return read_rows(results_dir / sweep / "rows.jsonl")
