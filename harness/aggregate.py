"""Rows → tidy tables (CSV + Markdown) and plots. Reads rows only; never reruns anything.

`python -m harness.aggregate [rows.jsonl or folder ...]` writes a report next to each rows file
(default: every rows.jsonl under results/).

Two kinds of rows, never mixed in one line of a table or one axis of a plot:
- memory rows (`quality_measured` false or absent, as in every row written before quality runs existed): memory and
  throughput, medians over repeats; their loss is titled "not a quality measurement" (a few steps, no baseline).
- quality rows (`quality_measured` true): mean ± std over seeds of the final held-out loss, the verdict of
  harness/verdict.py (refined against the sweep's full-rank baseline), and which configs are indistinguishable from
  the best at the measured noise (`vs_best`).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from harness import PROJECT_ROOT, finetune_report
from harness.config import OPERATIONAL_KEYS
from harness.estimate_check import row_errors
from harness.results import COLUMNS, read_rows
from harness.verdict import NOISE_SIGMAS, improvement, sweep_verdicts

GROUP_KEYS = ["model", "dataset", "tokenizer", "method", "scenario", "gpu", "device", "dtype", "batch_size", "seq_len"]
# a quality panel: the configs whose final eval losses compare (same held-out tokens, same budget)
PANEL_KEYS = ["model", "dataset", "tokenizer", "scenario", "budget_tokens"]
METRICS = ["peak_allocated", "peak_reserved", "nvml_process_peak", "cpu_live_peak", "weights", "grads",
           "optimizer_state", "activations", "step_ms", "tokens_per_s", "mfu", "train_loss", "eval_loss", "eval_ppl"]
SPREAD = ("step_ms", "tokens_per_s", "eval_loss", "peak_allocated")  # min/max over repeats kept beside the median
LOSSES = ["train_loss", "eval_loss", "eval_ppl"]  # of a memory row: no quality measurement
NOT_QUALITY = " (not a quality measurement)"
QUALITY_COLUMNS = ["budget_tokens", "budget_steps", "budget_epochs", "initial_eval_loss", "eval_loss_std",
                   "eval_loss_n", "improvement", "improvement_std", "improvement_n", "verdict", "verdict_reason",
                   "vs_best", "timing_comparable"]
# override keys that are no setting of a config: its own columns, and the seed, whose runs are the samples a quality
# config's mean ± std is taken over
NOT_SETTINGS = ("model", "method", "method.transforms", "train.seed", "quality.measure",
                "model.base", "train.save_checkpoint", "sweep.name")  # a base job's (harness/checkpoints.py)


def _settings_of(row: dict) -> dict[str, str]:
    overrides = row.get("overrides")
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o) if isinstance(overrides, list) else {}


def swept_keys(rows: list[dict], own_columns=("model", "method")) -> list[str]:
    """The sweep's axes that have no column of their own: the override keys whose values differ across the rows
    (a `train.batch_size=range(1,4)` sweep gives train.batch_size), except the keys that change how a job runs, not
    what it measures (OPERATIONAL_KEYS: rows that differ only there are repeats of one config). A key varies within
    one scenario: a finetune or generate sweep's base job (a pretrain row) is set by other keys, not swept by them."""
    by_scenario: dict = {}
    for r in rows:
        by_scenario.setdefault(r.get("scenario"), []).append(_settings_of(r))
    keys = dict.fromkeys(k for group in by_scenario.values() for s in group for k in s)
    return [k for k in keys if k not in own_columns and k not in OPERATIONAL_KEYS
            and any(len({s.get(k) for s in group}) > 1 for group in by_scenario.values())]


def settings_label(row: dict, keys: list[str]) -> str:
    """The row's values of the swept keys, `key=value` each ("-" where its command line left the key out)."""
    settings = _settings_of(row)
    return " ".join(f"{k}={settings.get(k, '-')}" for k in keys)


def set_settings(label, leave_out: tuple[str, ...] = ()) -> str:
    """A settings label (settings_label) less the keys the row's command line left out ("key=-": the method's own
    value stands) and the keys in `leave_out`: what a legend or a narrow column shows."""
    return " ".join(s for s in str(label or "").split()
                    if not s.endswith("=-") and s.split("=", 1)[0] not in leave_out)


def committed_row_files(root: Path = PROJECT_ROOT / "results") -> list[Path]:
    """The rows committed to the repository: results/<device>/*.rows.jsonl (not raw runs, not failed attempts)."""
    return sorted(p for p in root.glob("*/*.rows.jsonl") if p.parent.name not in ("runs", "baselines"))


def _quality_fields(row: dict) -> dict:
    """A row with `quality_measured` (false where absent: a row from before quality runs claims no quality) and its
    sweep's `not_learning_fraction` (from its config) beside the other fields."""
    fraction = ((row.get("config") or {}).get("quality") or {}).get("not_learning_fraction")
    return {**row, "quality_measured": bool(row.get("quality_measured")),
            "not_learning_fraction": row.get("not_learning_fraction", fraction)}


def load_rows(paths: list[Path]) -> pd.DataFrame:
    """All rows of the given rows.jsonl files; the latest row wins per run_id (a forced rerun replaces). Quality
    rows get their final verdict (harness/verdict.py: sweep_verdicts over all the given rows)."""
    latest = {}
    for row in (r for p in paths for r in read_rows(p)):
        latest.pop(row["run_id"], None)  # the latest row takes the place of the last one written
        latest[row["run_id"]] = _quality_fields(row)
    rows = list(latest.values())
    if not rows:
        return pd.DataFrame(columns=COLUMNS + ["quality_measured", "verdict", "verdict_reason"])
    judged = sweep_verdicts(rows)
    frame = pd.DataFrame(rows).drop(columns=["config"], errors="ignore")
    frame["verdict"] = [v for v, _ in judged]
    frame["verdict_reason"] = [r for _, r in judged]
    for col in COLUMNS + GROUP_KEYS:  # rows from before the tokenizer field have none
        if col not in frame:
            frame[col] = None
    return frame.reset_index(drop=True)


def peak_memory(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """The peak to plot and its probe's name: CUDA allocated where any row has it, else the CPU live-tensor peak."""
    if frame["peak_allocated"].notna().any():
        return frame["peak_allocated"], "peak allocated (torch.cuda)"
    return frame["cpu_live_peak"], "peak live tensors (CPU probe)"


def _numbers(group: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(group[column], errors="coerce").dropna() if column in group else pd.Series(dtype=float)


def _common(key, keys, group: pd.DataFrame) -> dict:
    """Fields every line has: its keys, status (ok, or the statuses its runs ended with), run and seed counts,
    medians (min/max for SPREAD) of the memory and speed metrics over the runs that ended ok."""
    line = dict(zip(keys, key, strict=True))
    good = group[group["status"] == "ok"]
    line["status"] = "ok" if len(good) == len(group) else "/".join(sorted(set(group["status"])))
    line["repeats"] = len(group)
    line["seeds"] = group["seed"].nunique() if "seed" in group else None
    line["error"] = next((e for e in group["error"] if isinstance(e, str)), "")
    for metric in METRICS:
        values = _numbers(good, metric)
        line[metric] = values.median() if len(values) else None
        if metric in SPREAD and len(values) > 1:
            line[f"{metric}_min"], line[f"{metric}_max"] = values.min(), values.max()
    return line


def _verdict_of(verdicts: list[str]) -> str:
    """One config's verdict from its runs': theirs where all agree, else `mixed: 2 learned, 1 diverged` (so a config
    is `learned` only where every run of it learned)."""
    counts = pd.Series(verdicts).value_counts()
    if len(counts) == 1:
        return counts.index[0]
    return "mixed: " + ", ".join(f"{n} {v}" for v, n in counts.items())


def _verdict_fields(group: pd.DataFrame) -> dict:
    """The config's verdict over its runs, and the reason of its first run whose verdict differs from learned (or of
    its first run); a memory config's is the health check of its training loss (harness/verdict.training_verdict)."""
    judged = group[group["verdict"].notna()]
    if not len(judged):
        return {"verdict": None, "verdict_reason": ""}
    worst = judged[judged["verdict"] != "learned"]
    return {"verdict": _verdict_of(list(judged["verdict"])),
            "verdict_reason": (worst if len(worst) else judged)["verdict_reason"].iloc[0]}


def _quality(line: dict, group: pd.DataFrame) -> dict:
    """Mean ± std over the runs (seeds) that ended ok of the final eval loss and of the improvement over the initial
    loss; the budget; the config's verdict and the reason of its first run whose verdict differs from learned (or of
    its first run)."""
    good = group[group["status"] == "ok"]
    for name, values in (("eval_loss", _numbers(good, "eval_loss")),
                         ("improvement", pd.Series([improvement(r) for r in good.to_dict("records")]).dropna())):
        line[name] = values.mean() if len(values) else None
        line[f"{name}_std"] = values.std() if len(values) > 1 else None  # sample std (n - 1)
        line[f"{name}_n"] = len(values)
    for name in ("budget_tokens", "budget_steps", "budget_epochs", "initial_eval_loss"):
        values = _numbers(group, name)
        line[name] = values.median() if len(values) else None
    line.update(_verdict_fields(group))
    line.update(finetune_report.summary(good))  # forgetting and task accuracy of scenario=finetune
    line["timing_comparable"] = "timing_comparable" not in group or not group["timing_comparable"].eq(False).any()
    return line


def _vs_best(table: pd.DataFrame) -> pd.Series:
    """Per panel (PANEL_KEYS): `best` for the learned config of lowest mean eval loss; `≈ best`
    where |mean - best| < NOISE_SIGMAS x sqrt(std² / n + std_best² / n_best) (the standard error of the difference of
    two means over seeds: about 95 % for 2 sigma); `worse` beyond it; `n/a (1 seed)` where either has one run; `-`
    for configs that did not learn."""
    result = pd.Series("-", index=table.index, dtype=object)
    learned = table[table["verdict"] == "learned"].dropna(subset=["eval_loss"])
    for _, panel in learned.groupby(PANEL_KEYS, dropna=False):
        best = panel.loc[panel["eval_loss"].idxmin()]
        for index, line in panel.iterrows():
            if index == best.name:
                result[index] = "best"
            elif min(line["eval_loss_n"], best["eval_loss_n"]) < 2:
                result[index] = "n/a (1 seed)"
            else:
                se = math.sqrt(line["eval_loss_std"] ** 2 / line["eval_loss_n"]
                               + best["eval_loss_std"] ** 2 / best["eval_loss_n"])
                result[index] = "≈ best" if line["eval_loss"] - best["eval_loss"] < NOISE_SIGMAS * se else "worse"
    return result


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per config. Memory rows: medians over repeats with min/max spread. Quality rows (the seed is no
    setting: its runs are the samples): mean ± std over seeds, budget, verdict, vs_best; grouped by budget too."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["transforms"] = frame["transforms"].map(lambda t: "+".join(t) if isinstance(t, list) else (t or ""))
    records = frame.to_dict("records")
    swept = swept_keys(records, own_columns=NOT_SETTINGS)
    frame["settings"] = [settings_label(r, swept) for r in records]
    keys = [k for k in GROUP_KEYS if k in frame] + ["transforms", "settings"]
    frame[keys] = frame[keys].fillna("-")
    quality = frame["quality_measured"].astype(bool)
    lines = [_common(key, keys, group) | {"quality_measured": False} | _verdict_fields(group)
             for key, group in frame[~quality].groupby(keys, sort=False, dropna=False)]
    if quality.any():
        part = frame[quality].assign(budget_tokens=frame["budget_tokens"] if "budget_tokens" in frame else None)
        lines += [_quality(_common(key, keys + ["budget_tokens"], group) | {"quality_measured": True}, group)
                  for key, group in part.groupby(keys + ["budget_tokens"], sort=False, dropna=False)]
    table = pd.DataFrame(lines)
    for col in QUALITY_COLUMNS:  # every table has them (empty on memory lines), so a query needs no check first
        if col not in table:
            table[col] = None
    if quality.any():
        table["vs_best"] = _vs_best(table)
    return table


KERNEL_COLUMNS = ["timestamp", "git_sha", "variant", "status", "vocab", "input_scale", "load_ms", "step_ms",
                  "ratio_to_torch_fused", "state_bytes_per_param", "time_over_compile", "stream_ms",
                  "stream_over_compile", "peak_beyond_inputs",
                  "bound_bytes", "peak_over_bound",
                  "cache_bytes", "bytes_over_bf16", "quantize_ms", "decode_ms", "time_over_bf16", "decode_graph_ms",
                  "graph_time_over_bf16", "mean_abs_error", "error"]


def kernel_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Kernel benchmark rows (harness/benches/) as they are, one line per measured variant and run, oldest first:
    each run's ratios belong together, and the git_sha column says which code measured them."""
    frame = frame.assign(git_sha=frame["git_sha"].astype(str).str[:7])
    return frame[[c for c in KERNEL_COLUMNS if c in frame and frame[c].notna().any()]].reset_index(drop=True)


def kernel_markdown(table: pd.DataFrame) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "-"
        return f"{v:,.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


MIB_COLUMNS = ("peak_allocated", "cpu_live_peak", "weights", "grads", "optimizer_state", "activations")


def _cell(col: str, v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    if col in MIB_COLUMNS:
        return f"{v / 2**20:,.1f}"
    if col == "mfu":
        return f"{100 * v:.1f} %"
    if isinstance(v, float):
        return f"{v:,.4g}" if col != "tokens_per_s" else f"{v:,.0f}"
    return str(v)


def _grid(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in cells]) + "\n"


def _shown(table: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in table and (c != "settings" or table[c].astype(bool).any())]


def _memory_markdown(table: pd.DataFrame) -> str:
    shown = _shown(table, ["model", "method", "transforms", "settings", "status", "repeats", "peak_allocated",
                           "cpu_live_peak", "weights", "grads", "optimizer_state", "activations", "step_ms",
                           "tokens_per_s", "mfu", "eval_loss", "verdict"])
    header = [c + (" (MiB)" if c in MIB_COLUMNS else NOT_QUALITY if c in LOSSES else "") for c in shown]
    return _grid(header, [[_cell(c, r[c]) for c in shown] for _, r in table.iterrows()])


def _si(value: float) -> str:
    return next(f"{value / 10**e:.3g}{p}" for e, p in ((9, "G"), (6, "M"), (3, "k"), (0, "")) if value >= 10**e
                or e == 0)


def data_label(line) -> str:
    """`c4` or, where the rows name their tokenizer, `c4 (bpe tokens)`."""
    return line["dataset"] + (f" ({line['tokenizer']} tokens)" if line.get("tokenizer") not in (None, "-") else "")


def budget_label(line) -> str:
    """`10.5M tokens, 2000 steps, 0.41 epochs` (epochs: tokens / training corpus tokens)."""
    parts = [f"{_si(line['budget_tokens'])} tokens" if pd.notna(line.get("budget_tokens")) else "budget unknown"]
    if pd.notna(line.get("budget_steps")):
        parts.append(f"{line['budget_steps']:.0f} steps")
    if pd.notna(line.get("budget_epochs")):
        parts.append(f"{line['budget_epochs']:.2g} epochs")
    return ", ".join(parts)


def _mean_std(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None and pd.notna(std) else "")


def _quality_markdown(table: pd.DataFrame) -> str:
    panels = table.drop_duplicates(PANEL_KEYS + ["gpu"])
    caption = [f"Quality: {p['model']} on {data_label(p)} ({p['scenario']}, {p['gpu']}), budget {budget_label(p)}."
               for _, p in panels.iterrows()]
    caption.append(f"eval loss: final held-out loss (nats/token), mean ± std (n - 1) over the runs (seeds) that "
                   f"ended ok; improvement: initial - final eval loss; verdict: harness/verdict.py, `mixed` where the "
                   f"seeds disagree (a config learned only where all its seeds did); vs best: `≈ best` where |mean - "
                   f"best| < {NOISE_SIGMAS:g} x sqrt(std²/n + std_best²/n_best) among the configs that learned; reason: of "
                   f"the config's first run that did not learn, else of its first run.")
    comparable = table["timing_comparable"].all()
    if not comparable:
        caption.append("tokens/s left out: jobs ran side by side on one device (run.parallel > 1), their timings "
                       "are not comparable.")
    columns = _shown(table, ["model", "method", "transforms", "settings", "status", "repeats", "seeds"])
    peak = "peak_allocated" if table["peak_allocated"].notna().any() else "cpu_live_peak"
    header = columns + ["eval loss", "improvement", "verdict", "vs best", f"{peak} (MiB)"] + (
        ["tokens_per_s"] if comparable else []) + ["reason"]
    cells = [[_cell(c, r[c]) for c in columns]
             + [_mean_std(r["eval_loss"], r["eval_loss_std"]), _mean_std(r["improvement"], r["improvement_std"]),
                str(r["verdict"] or "-"), r["vs_best"], _cell(peak, r[peak])]
             + ([_cell("tokens_per_s", r["tokens_per_s"])] if comparable else []) + [r["verdict_reason"] or ""]
             for _, r in table.iterrows()]
    return "\n".join(caption) + "\n\n" + _grid(header, cells)


def _split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(quality lines, memory lines) of a tidy table."""
    quality = table["quality_measured"].astype(bool) if "quality_measured" in table else pd.Series(False, table.index)
    return table[quality], table[~quality]


def to_markdown(table: pd.DataFrame) -> str:
    """The quality lines and the memory lines as two tables (the memory lines' loss titled as no quality
    measurement)."""
    quality, memory = _split(table)
    parts = [_quality_markdown(quality) + finetune_report.markdown(quality)] if len(quality) else []
    if len(memory):
        parts.append(f"Memory and throughput; the loss{NOT_QUALITY}: a short run, no baseline. verdict: whether its "
                     "training loss fell (harness/verdict.training_verdict), a check of the run, not a quality number."
                     "\n\n"
                     + _memory_markdown(memory))
    return "\n".join(parts)


def to_csv_table(table: pd.DataFrame) -> pd.DataFrame:
    """The tidy table as table.csv holds it: a memory line's losses under columns named `... (not a quality
    measurement)`, a quality line's under their own names."""
    quality, _ = _split(table)
    table = table.copy()
    for col in (c for c in LOSSES if c in table):
        memory_values = table[col].where(~table.index.isin(quality.index))
        table[col] = table[col].where(table.index.isin(quality.index))
        table.insert(table.columns.get_loc(col) + 1, col + NOT_QUALITY, memory_values)
    empty = [c for c in table if (c.split(" ")[0] in LOSSES or c in QUALITY_COLUMNS) and table[c].isna().all()]
    return table.drop(columns=empty)


def write_report(rows_path: Path, out_dir: Path) -> list[Path]:
    from harness import generate_report
    from harness.plots import memory_breakdown, pareto, throughput_bars

    frame = load_rows([rows_path])
    if frame.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "table.csv", out_dir / "table.md"]
    if "kernel" in frame and frame["kernel"].notna().all():
        table = kernel_table(frame)
        table.to_csv(written[0], index=False)
        written[1].write_text(kernel_markdown(table))
        return written
    table = tidy(frame)
    to_csv_table(table).to_csv(written[0], index=False)
    generate = generate_report.table(frame)  # scenario=generate: its own table, fidelity verdicts and plots
    written[1].write_text(to_markdown(table) + generate_report.markdown(generate))
    estimates = row_errors(read_rows(rows_path, warn=False))  # each row's estimate_peak against its peak
    if estimates:
        written.append(out_dir / "estimate.md")
        written[-1].write_text(estimates)
    quality, memory = _split(table)
    written += pareto(quality, out_dir) + finetune_report.pareto_accuracy(table, out_dir)
    written += memory_breakdown(memory, out_dir) + throughput_bars(memory, out_dir)
    written += generate_report.plots(generate, out_dir)
    return written


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or [PROJECT_ROOT / "results"]
    paths = []
    for t in targets:
        paths += sorted(t.rglob("rows.jsonl")) + sorted(t.rglob("*.rows.jsonl")) if t.is_dir() else [t]
    if not paths:
        print(f"no rows.jsonl under {', '.join(map(str, targets))}", file=sys.stderr)
        return 1
    for path in paths:
        stem = path.name.removesuffix(".rows.jsonl").removesuffix("rows.jsonl").rstrip(".")
        out = path.parent / ("report" if not stem else f"report_{stem}")
        for written in write_report(path, out):
            print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
