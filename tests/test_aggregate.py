import pandas as pd
import pytest

from harness.aggregate import load_rows, tidy, write_report
from harness.plots import pareto_front
from harness.results import append_row, read_rows
from harness.verdict import job_verdict


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
    assert {p.name for p in written} == {"table.csv", "table.md", "memory_breakdown.png", "throughput.png"}
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


def test_a_base_jobs_own_keys_are_no_setting_of_the_sweep_it_serves(tmp_path):
    """A generate sweep with its base job: the base (a pretrain row) is set by train.* keys the generate jobs leave
    out; only what varies among the generate jobs (here a cache window) labels them."""
    path = tmp_path / "rows.jsonl"
    append_row(path, {**_row("base", "adamw", 0, 100, 2.0, 10.0), "overrides": ["train.steps=600", "method=adamw"]})
    for i, extra in enumerate(([], ["method.cache_options.window=60"])):
        append_row(path, {**_row(f"g{i}", "streaming_llm", 0, 50, None, None), "scenario": "generate",
                          "overrides": ["infer.fidelity=true", *extra]})
    table = tidy(load_rows([path]))
    assert list(table["settings"]) == ["method.cache_options.window=-", "method.cache_options.window=-",
                                       "method.cache_options.window=60"]


def quality_rows(budget=2_000_000, timing_comparable=True):
    """A constructed quality sweep at llama_60m: (method, final eval losses of seeds 0-2, peak MiB, tokens/s).
    adamw is the baseline (improvement about 7 nats); lowrank gains 0.6 (< 0.1 x 7: not_learning), mezo does not
    move, galore_hi_lr ends above its start, one fira seed diverged."""
    table = [("adamw", (3.40, 3.42, 3.41), 1500, 78000), ("adamw8bit", (3.41, 3.43, 3.40), 1400, 85000),
             ("galore", (3.52, 3.50, 3.51), 1350, 75000), ("apollo", (3.45, 3.46, 3.44), 1300, 58000),
             ("lowrank", (9.80, 9.81, 9.79), 900, 90000), ("mezo", (10.40, 10.41, 10.40), 760, 109000),
             ("galore_hi_lr", (27.5, 25.1, 30.2), 1350, 75000), ("fira", (3.47, None, 3.49), 1380, 38000)]
    rows = []
    for method, finals, peak_mib, tps in table:
        for seed, final in enumerate(finals):
            evals = [[0, 10.4], [500, (10.4 + final) / 2 if final else None], [1000, final]]
            train = [[s, 10.4 - 0.007 * s] for s in range(0, 1001, 10)]
            verdict, reason = job_verdict(10.4, evals, train, final)
            rows.append({
                "run_id": f"{method}{seed}", "sweep": "q", "repeat": 0, "status": "ok" if final else "diverged",
                "error": None if final else "loss is nan at step 700", "model": "llama_60m", "dataset": "c4",
                "method": method, "scenario": "pretrain", "gpu": "h100", "device": "cuda", "dtype": "bfloat16",
                "batch_size": 8, "seq_len": 256, "transforms": [], "seed": seed,
                "overrides": [f"method={method}", f"train.seed={seed}"], "peak_allocated": peak_mib * 2**20,
                "weights": 100 * 2**20, "grads": 100 * 2**20, "optimizer_state": 200 * 2**20,
                "activations": 600 * 2**20, "tokens_per_s": tps + seed * 100, "step_ms": 2048e3 / tps,
                "eval_loss": final, "train_loss": final, "quality_measured": True, "budget_tokens": budget,
                "budget_steps": budget // 2048, "budget_epochs": budget / 50e6, "initial_eval_loss": 10.4,
                "eval_curve": evals, "train_curve": train, "verdict": verdict, "verdict_reason": reason,
                "timing_comparable": timing_comparable,
                "config": {"quality": {"measure": True, "not_learning_fraction": 0.1}}})
    return rows


def _quality_table(tmp_path, **kw):
    path = tmp_path / "q.rows.jsonl"
    for row in quality_rows(**kw):
        append_row(path, row)
    return path, tidy(load_rows([path])).set_index("method")


def test_quality_rows_give_mean_std_over_seeds_and_the_final_verdicts(tmp_path):
    _, table = _quality_table(tmp_path)
    adamw = table.loc["adamw"]
    assert adamw["repeats"] == 3 and adamw["seeds"] == 3 and adamw["settings"] == ""  # the seed is no setting
    assert adamw["eval_loss"] == pytest.approx(3.41) and adamw["eval_loss_std"] == pytest.approx(0.01)
    assert adamw["improvement"] == pytest.approx(6.99) and adamw["budget_tokens"] == 2_000_000
    assert dict(table["verdict"]) == {
        "adamw": "learned", "adamw8bit": "learned", "galore": "learned", "apollo": "learned",
        "lowrank": "not_learning", "mezo": "not_learning", "galore_hi_lr": "diverged",
        "fira": "mixed: 2 learned, 1 diverged"}
    assert table.loc["lowrank", "verdict_reason"].startswith("improvement 0.6 is below 0.1 x the adamw baseline's")
    assert table.loc["fira", "verdict_reason"] == "eval loss not finite at step 500"  # its diverged seed's reason


def test_vs_best_marks_the_configs_within_the_noise_of_the_best(tmp_path):
    """adamw8bit (3.413 ± 0.015) is within 2 sigma of adamw's 3.41 ± 0.01; galore (3.51) and apollo (3.45) are not;
    configs that did not learn are never compared."""
    _, table = _quality_table(tmp_path)
    assert dict(table["vs_best"]) == {"adamw": "best", "adamw8bit": "≈ best", "galore": "worse", "apollo": "worse",
                                      "lowrank": "-", "mezo": "-", "galore_hi_lr": "-", "fira": "-"}


def test_quality_markdown_states_budget_noise_rule_and_verdicts(tmp_path):
    from harness.aggregate import to_markdown

    _, table = _quality_table(tmp_path)
    text = to_markdown(table.reset_index())
    assert text.startswith("Quality: llama_60m on c4 (pretrain, h100), budget 2M tokens, 976 steps, 0.04 epochs.")
    assert "| adamw |  | ok | 3 | 3 | 3.4100 ± 0.0100 | 6.9900 ± 0.0100 | learned | best |" in text
    assert "| mezo |" in text and "not_learning | - |" in text and "Memory and throughput" not in text


def test_side_by_side_timings_stay_out_of_the_quality_table_and_plots(tmp_path):
    from harness.aggregate import to_markdown

    path, table = _quality_table(tmp_path, timing_comparable=False)
    text = to_markdown(table.reset_index())
    assert "tokens/s left out" in text and "tokens_per_s" not in text
    assert {p.name for p in write_report(path, tmp_path / "report")} == {"table.csv", "table.md", "pareto_memory.png"}


def test_a_quality_report_draws_quality_plots_and_no_memory_only_view(tmp_path):
    path, _ = _quality_table(tmp_path)
    written = write_report(path, tmp_path / "report")
    assert {p.name for p in written} == {"table.csv", "table.md", "pareto_memory.png", "pareto_throughput.png"}
    csv = pd.read_csv(tmp_path / "report" / "table.csv")
    assert "eval_loss" in csv and "eval_loss (not a quality measurement)" not in csv and "vs_best" in csv


def test_rows_without_quality_measured_claim_no_quality(tmp_path):
    """Rows written before quality runs existed (every committed rows file) are memory rows: their loss is titled as
    no quality measurement in both tables, and no plot has a loss axis."""
    from harness.aggregate import to_markdown

    path = tmp_path / "rows.jsonl"
    append_row(path, _row("a", "adamw", 0, 100, 6.4, 10.0))
    append_row(path, _row("b", "galore", 0, 60, 27.5, 5.0))
    frame = load_rows([path])
    assert list(frame["quality_measured"]) == [False, False] and list(frame["verdict"]) == [None, None]
    table = tidy(frame)
    assert "| eval_loss (not a quality measurement) |" in to_markdown(table)
    written = write_report(path, tmp_path / "report")
    assert {p.name for p in written} == {"table.csv", "table.md", "memory_breakdown.png", "throughput.png"}
    csv = pd.read_csv(tmp_path / "report" / "table.csv")
    assert "eval_loss" not in csv and list(csv["eval_loss (not a quality measurement)"]) == [6.4, 27.5]


def test_finetune_lines_of_one_method_that_differ_by_a_setting_are_told_apart(tmp_path):
    """A recipe ablation (lora at its own recipe and at rank 64) in the finetune table and the accuracy plot's legend:
    each line names its settings, less the dataset (a column there) and the keys its command line left out."""
    from harness.finetune_report import markdown

    path = tmp_path / "f.rows.jsonl"
    for row in quality_rows():
        if row["method"] not in ("adamw", "galore"):
            continue
        method, extra = ("lora", ["method.transform_options.lora.rank=64"]) if row["method"] == "galore" else (
            "lora", [])
        append_row(path, {**row, "method": method, "scenario": "finetune", "task_accuracy": 0.8,
                          "forgetting": 0.05, "overrides": ["dataset=task", f"method={method}", *extra,
                                                            f"train.seed={row['seed']}"]})
    text = markdown(tidy(load_rows([path])))
    (header,) = [line for line in text.split("\n") if line.startswith("| model")]
    assert [c.strip() for c in header.split("|")[1:5]] == ["model", "dataset", "method", "settings"]
    lines = [line for line in text.split("\n") if line.startswith("| llama_60m")]
    assert [line.split("|")[4].strip() for line in lines] == ["", "method.transform_options.lora.rank=64"]
