import pandas as pd

from harness.aggregate import load_rows, tidy, write_report
from harness.plots import pareto_front
from harness.results import append_row, read_rows


def _row(run_id, method, repeat, peak, loss, step_ms, status="ok"):
    return {"run_id": run_id, "sweep": "s", "repeat": repeat, "status": status, "error": None, "model": "m",
            "dataset": "d", "method": method, "scenario": "pretrain", "gpu": "cpu", "device": "cpu",
            "dtype": "float32", "batch_size": 2, "seq_len": 8, "transforms": [], "cpu_live_peak": peak,
            "weights": 10, "grads": 10, "optimizer_state": 20 if method == "adamw" else 0, "activations": 5,
            "eval_loss": loss, "step_ms": step_ms, "tokens_per_s": 16000 / step_ms if step_ms else None}


def test_pareto_front():
    points = [(1, 5), (2, 4), (3, 4.5), (4, 1), (5, 1)]
    assert pareto_front(points, minimize_x=True) == [0, 1, 3]
    assert pareto_front(points, minimize_x=False) == [4]


def test_tidy_reports_median_and_spread_over_repeats(tmp_path):
    path = tmp_path / "rows.jsonl"
    for i, step in enumerate([10.0, 30.0, 20.0]):
        append_row(path, _row(f"a{i}", "adamw", i, 100, 2.0 + i / 10, step))
    append_row(path, _row("s0", "sgd", 0, 60, 3.0, 5.0))
    append_row(path, _row("s1", "sgd", 1, None, None, None, status="oom"))
    table = tidy(load_rows([path])).set_index("method")
    assert table.loc["adamw", "step_ms"] == 20.0 and table.loc["adamw", "repeats"] == 3
    assert (table.loc["adamw", "step_ms_min"], table.loc["adamw", "step_ms_max"]) == (10.0, 30.0)
    assert table.loc["sgd", "status"] == "ok/oom" and table.loc["sgd", "eval_loss"] == 3.0


def test_latest_row_wins_per_run_id(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_row(path, _row("a", "adamw", 0, 100, 2.0, 10.0, status="error"))
    append_row(path, _row("a", "adamw", 0, 100, 2.0, 10.0))
    assert list(load_rows([path])["status"]) == ["ok"]


def test_report_files(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_row(path, _row("a", "adamw", 0, 100, 2.0, 10.0))
    append_row(path, _row("b", "sgd", 0, 60, 3.0, 5.0))
    written = write_report(path, tmp_path / "report")
    assert {p.name for p in written} == {"table.csv", "table.md", "pareto_memory.png", "pareto_throughput.png",
                                         "memory_breakdown.png"}
    assert "| adamw |" in (tmp_path / "report" / "table.md").read_text()
    assert len(pd.read_csv(tmp_path / "report" / "table.csv")) == 2


def test_kernel_rows_get_a_table_of_variants_per_run(tmp_path):
    path = tmp_path / "k.rows.jsonl"
    for sha, ms in (("aaaaaaa111", 2.0), ("bbbbbbb222", 1.5)):
        for variant, ratio in (("bf16_sdpa", 1.0), ("kivi_2bit", ms)):
            append_row(path, {"run_id": sha + variant, "sweep": "kivi", "kernel": "kivi", "variant": variant,
                              "status": "ok", "error": None, "git_sha": sha, "timestamp": sha,
                              "decode_ms": ratio * 0.05, "time_over_bf16": ratio})
    written = write_report(path, tmp_path / "report")
    assert {p.name for p in written} == {"table.csv", "table.md"}
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert list(table["variant"]) == ["bf16_sdpa", "kivi_2bit"] * 2
    assert list(table["git_sha"]) == ["aaaaaaa"] * 2 + ["bbbbbbb"] * 2 and list(table["time_over_bf16"])[-1] == 1.5
    assert "| bbbbbbb | kivi_2bit | ok |" in (tmp_path / "report" / "table.md").read_text()


def test_a_swept_setting_other_than_the_method_shows_in_every_table_and_label(tmp_path):
    """A `-m train.batch_size=range(1,4)` sweep: three adamw lines that differ by batch size, each labelled with it
    (not merged as repeats of one config, not three identical "adamw")."""
    from harness.aggregate import to_markdown
    from harness.plots import _labels
    from harness.run import summary_table

    path = tmp_path / "rows.jsonl"
    for b in (1, 2, 3):
        row = _row(f"b{b}", "adamw", 0, 100 * b, 2.0, 10.0 * b)
        append_row(path, {**row, "batch_size": b, "overrides": [f"train.batch_size={b}", "run.device=cpu"]})
    append_row(path, {**_row("x", "sgd", 0, 50, 3.0, 5.0), "overrides": ["run.device=cpu"]})
    rows = [r for _, r in load_rows([path]).iterrows()]
    console = summary_table([r.to_dict() for r in rows])
    assert console.splitlines()[0].split()[:3] == ["model", "method", "settings"]
    assert [line.split()[2] for line in console.splitlines()[1:5]] == [
        "train.batch_size=1", "train.batch_size=2", "train.batch_size=3", "train.batch_size=-"]
    table = tidy(load_rows([path]))
    assert list(table["settings"]) == ["train.batch_size=1", "train.batch_size=2", "train.batch_size=3",
                                       "train.batch_size=-"] and list(table["repeats"]) == [1, 1, 1, 1]
    assert "| settings |" in to_markdown(table) and "| adamw |  | train.batch_size=2 |" in to_markdown(table)
    assert _labels(table)[:2] == ["adamw train.batch_size=1", "adamw train.batch_size=2"]


def test_a_sweep_of_methods_alone_has_no_settings_column(tmp_path):
    from harness.aggregate import to_markdown
    from harness.run import summary_table

    path = tmp_path / "rows.jsonl"
    for i, method in enumerate(("adamw", "sgd")):
        append_row(path, {**_row(f"r{i}", method, 0, 100, 2.0, 10.0), "overrides": [f"method={method}", "run.device=cpu"]})
    table = tidy(load_rows([path]))
    assert "settings" not in to_markdown(table) and "settings" not in summary_table(read_rows(path))


def test_keys_that_change_how_a_job_runs_are_no_setting(tmp_path):
    """Rows that differ only in run.timeout_s (an operational key, not part of run_id) are repeats of one config."""
    path = tmp_path / "rows.jsonl"
    for i, timeout in enumerate((100, 200)):
        append_row(path, {**_row(f"r{i}", "adamw", i, 100, 2.0, 10.0), "overrides": [f"run.timeout_s={timeout}"]})
    table = tidy(load_rows([path]))
    assert list(table["settings"]) == [""] and list(table["repeats"]) == [2]
