"""The gate: a planted +2 % memory regression fails naming key and metric; a clean rerun passes; timing needs two
consecutive violations; the committed CPU baseline matches a fresh gate sweep."""
import json
import math

import pandas as pd
import pytest
import torch

from harness import PROJECT_ROOT
from harness.config import plan
from harness.gate import BaselineError, check, compare, failing, load_baseline, main, update
from harness.launch import _config_columns
from harness.results import append_row
from harness.worker import execute
from methods import adamw
from tests.helpers import rows_of, run_cli

GATE = ["sweep=gate_cpu", "method=adamw"]


class BallastAdamW(torch.optim.AdamW):
    """AdamW that also keeps 2 % extra state per parameter: the planted regression."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "ballast" not in state:
                    state["ballast"] = torch.zeros(math.ceil(0.02 * 2 * p.numel()), dtype=p.dtype)
        return loss


def _run_in_process(results_dir, monkeypatch=None) -> None:
    """Run the gate job in this process (so a test can swap in a wrapper) and append its row like the runner."""
    (job,) = plan([*GATE, f"run.results_dir={results_dir}"])
    job.job_dir.mkdir(parents=True, exist_ok=True)
    (job.job_dir / "job.json").write_text(json.dumps({"run_id": job.run_id, "repeat": 0, "config": job.config}))
    result = execute(job.job_dir)
    assert result["status"] == "ok", result["error"]
    append_row(job.sweep_dir / "rows.jsonl", {"run_id": job.run_id, "timestamp": pd.Timestamp.now().isoformat(),
                                              **_config_columns(job), **result})


def test_planted_two_percent_regression_fails_then_clean_rerun_passes(results_dir, tmp_path, monkeypatch, capsys):
    rows_path, baseline = results_dir / "gate_cpu" / "rows.jsonl", tmp_path / "baseline.csv"
    _run_in_process(results_dir)
    assert update([rows_path], baseline) == 0
    monkeypatch.setattr(adamw.torch.optim, "AdamW", BallastAdamW)
    _run_in_process(results_dir)
    capsys.readouterr()
    assert check([rows_path], baseline) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "cpu/llama_tiny/synthetic/adamw/pretrain/4/64" in out
    assert "optimizer_state" in out and "gate: FAIL" in out
    monkeypatch.undo()
    _run_in_process(results_dir)
    assert check([rows_path], baseline) == 0


def _rows(step_ms_values, status="ok", peak=1000):
    return pd.DataFrame([{"device": "cuda", "model": "m", "dataset": "d", "method": "adamw", "scenario": "pretrain",
                          "batch_size": 8, "seq_len": 256, "status": status, "peak_allocated": peak,
                          "step_ms": v, "timestamp": f"2026-01-0{i + 1}"} for i, v in enumerate(step_ms_values)])


def test_timing_needs_two_consecutive_violations():
    baseline = _rows([100.0]).drop(columns="timestamp")
    one = compare(_rows([100.0, 130.0]), baseline, gate_time=True)
    assert list(one["kind"]) == ["pending"] and failing(one).empty
    two = compare(_rows([130.0, 125.0]), baseline, gate_time=True)
    assert list(two["kind"]) == ["regression"] and list(two["metric"]) == ["step_ms"]
    assert compare(_rows([130.0, 125.0]), baseline, gate_time=False).empty


def test_gpu_allocated_tolerance_and_status_change():
    baseline = _rows([100.0], peak=1000).drop(columns="timestamp")
    assert compare(_rows([100.0], peak=1004), baseline).empty  # +0.4 % is within 0.5 %
    assert list(compare(_rows([100.0], peak=1006), baseline)["kind"]) == ["regression"]
    assert list(compare(_rows([100.0], peak=900), baseline)["kind"]) == ["improvement"]
    status = compare(_rows([None], status="oom"), baseline)
    assert list(status["kind"]) == ["status"] and not failing(status).empty


def test_vanished_and_appeared_keys():
    baseline = _rows([100.0]).drop(columns="timestamp")
    other = _rows([100.0]).assign(method="sgd")
    findings = compare(other, baseline)
    assert sorted(findings["kind"]) == ["appeared", "vanished"] and len(failing(findings)) == 1


@pytest.mark.parametrize("content,message", [("", "not a readable CSV"), ("a,b\n1,2\n", "lacks column"),
                                             ("\x00\xff\xfe", "not a readable CSV")])
def test_corrupt_baseline_is_one_clear_line(tmp_path, content, message, capsys):
    path = tmp_path / "b.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(BaselineError, match=message):
        load_baseline(path)
    rows = tmp_path / "rows.jsonl"
    append_row(rows, {"run_id": "x", "status": "ok"})
    assert main(["check", "--rows", str(rows), "--baseline", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_committed_cpu_baseline_matches_a_fresh_gate_sweep(results_dir):
    proc = run_cli(["sweep=gate_cpu"], results_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(r["status"] == "ok" for r in rows_of(results_dir, "gate_cpu"))
    assert check([results_dir / "gate_cpu" / "rows.jsonl"], PROJECT_ROOT / "results" / "baselines" / "cpu.csv") == 0


def test_committed_gpu_baselines_are_made_from_the_committed_rows(tmp_path):
    """A GPU baseline is written by `gate update` from that GPU's committed rows (a CPU host cannot make new GPU
    rows to check): rebuilt from those rows now, it must come out exactly as committed, so a baseline left behind
    by rows committed after it, or edited by hand, fails."""
    baselines = [b for b in sorted((PROJECT_ROOT / "results" / "baselines").glob("*.csv")) if b.stem != "cpu"]
    assert baselines, "no GPU baseline under results/baselines/"
    for baseline in baselines:
        rows = sorted((PROJECT_ROOT / "results" / baseline.stem).glob("*.rows.jsonl"))
        assert rows, f"{baseline} has no committed rows under results/{baseline.stem}/"
        assert update(rows, tmp_path / baseline.name) == 0
        pd.testing.assert_frame_equal(load_baseline(baseline), load_baseline(tmp_path / baseline.name),
                                      check_exact=True, obj=f"{baseline} against the one its rows make now")


def test_quality_rows_of_the_same_key_do_not_displace_memory_rows(tmp_path):
    """A quality run keys like the memory sweep of its config (same model, data, method, shape) but runs another
    recipe and budget: `update` and `check` read the memory rows only."""
    rows = tmp_path / "r.rows.jsonl"
    memory = {**_rows([100.0], peak=1000).iloc[0].to_dict(), "run_id": "a"}
    for row in (memory, {**memory, "peak_allocated": 5000, "timestamp": "2026-01-09", "quality_measured": True}):
        append_row(rows, row)
    assert update([rows], tmp_path / "b.csv") == 0
    assert load_baseline(tmp_path / "b.csv")["peak_allocated"].tolist() == [1000]
