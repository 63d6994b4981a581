"""The finetune scenario in reports: forgetting and task accuracy per config, and their Pareto plots.

Per quality config of scenario=finetune (harness/finetune.py): mean ± std over its seeds of forgetting (source
held-out loss after - before, nats/token) and of task accuracy (label-word likelihood, harness/tasks.py).
Plots (a task's panels only): accuracy against peak memory, and against throughput. Quality jobs usually run side by
side (run.parallel > 1), so their own timings are not comparable: the throughput of a config then comes from a
memory (timing) run of the same model, dataset, scenario, method and transforms in the same report, run one job at a
time; a config without one is left out of that plot, and the title says where the throughputs come from. As in the
loss plots, configs that did not learn are hollow and grey and never on the front.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FIELDS = ("task_accuracy", "forgetting")
TIMING_KEYS = ["model", "dataset", "scenario", "method", "transforms"]
GIB = 2**30


def summary(good: pd.DataFrame) -> dict:
    """Mean, std (n - 1) and count over a config's ok runs of each of FIELDS present."""
    line = {}
    for name in FIELDS:
        values = pd.to_numeric(good[name], errors="coerce").dropna() if name in good else pd.Series(dtype=float)
        line[name] = values.mean() if len(values) else None
        line[f"{name}_std"] = values.std() if len(values) > 1 else None
        line[f"{name}_n"] = len(values)
    return line


def _mean_std(mean, std, spec: str) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return format(mean, spec) + (f" ± {format(std, spec)}" if std is not None and pd.notna(std) else "")


def _settings(r) -> str:
    """The line's settings less its dataset (a column here, a panel in the plots): what tells two lines of one
    method apart, e.g. an ablation of its recipe."""
    from harness.aggregate import set_settings  # aggregate imports this module

    return set_settings(r.get("settings"), leave_out=("dataset",))


def markdown(quality: pd.DataFrame) -> str:
    """The finetune lines' forgetting and task accuracy, or '' where the table has none."""
    lines = quality[quality["scenario"] == "finetune"] if "scenario" in quality else quality.iloc[:0]
    if lines.empty or all(c not in lines for c in FIELDS):
        return ""
    swept = any(_settings(r) for _, r in lines.iterrows())
    header = ["model", "dataset", "method", *(["settings"] if swept else []), "task accuracy",
              "forgetting (nats/token)", "eval loss", "verdict"]
    rows = [[str(r["model"]), str(r["dataset"]), str(r["method"]), *([_settings(r)] if swept else []),
             _mean_std(r.get("task_accuracy"), r.get("task_accuracy_std"), ".3f"),
             _mean_std(r.get("forgetting"), r.get("forgetting_std"), "+.4f"),
             _mean_std(r.get("eval_loss"), r.get("eval_loss_std"), ".4f"), str(r.get("verdict") or "-")]
            for _, r in lines.iterrows()]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    grid = [header, ["-" * w for w in widths], *rows]
    text = "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in grid)
    return ("\nFinetuning: task accuracy (label-word likelihood on the task's held-out examples) and forgetting (the "
            "source corpus's held-out loss after - before finetuning), mean ± std over seeds.\n\n" + text + "\n")


def _with_timing(lines: pd.DataFrame, memory: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """`lines` with the throughput to plot: their own where comparable, else the timing runs' (memory lines)."""
    if lines["timing_comparable"].astype(bool).all():
        return lines.assign(throughput=lines["tokens_per_s"]), "the same runs"
    timing = memory[memory["scenario"] == "finetune"][TIMING_KEYS + ["tokens_per_s"]].drop_duplicates(TIMING_KEYS)
    merged = lines.drop(columns=["throughput"], errors="ignore").merge(
        timing.rename(columns={"tokens_per_s": "throughput"}), on=TIMING_KEYS, how="left")
    return merged, "timing runs of the same configs, one job at a time"


def _panel(ax, sub: pd.DataFrame, x_col: str, scale: float, minimize_x: bool) -> None:
    from harness.plots import NOT_LEARNED, _style, pareto_front

    sub = sub.reset_index(drop=True)
    # a panel is one model, dataset and budget: its configs differ by method (and transforms)
    labels = [r["method"] + (f" +{r['transforms']}" if r["transforms"] not in ("", "-") else "")
              + "".join("\n" + line for line in textwrap.wrap(_settings(r), 48)) for _, r in sub.iterrows()]
    learned = (sub["verdict"] == "learned").tolist()
    xs, ys = (sub[x_col] / scale).tolist(), sub["task_accuracy"].tolist()
    for i, row in sub.iterrows():
        color, marker = _style(i)
        std = row.get("task_accuracy_std")
        std = std if std is not None and pd.notna(std) else None
        if learned[i]:
            ax.errorbar(xs[i], ys[i], yerr=std, fmt=marker, ms=7, capsize=3, color=color, label=labels[i])
        else:
            ax.errorbar(xs[i], ys[i], yerr=std, fmt=marker, ms=7, capsize=3, mfc="none", mec=NOT_LEARNED,
                        color=NOT_LEARNED, label=f"{labels[i]}: {row['verdict']}")
    ok = [i for i in range(len(sub)) if learned[i] and pd.notna(xs[i]) and pd.notna(ys[i])]
    # the front maximizes accuracy: pareto_front minimizes y, so it gets -accuracy
    front = sorted((ok[j] for j in pareto_front([(xs[i], -ys[i]) for i in ok], minimize_x)), key=lambda i: xs[i])
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", lw=1, zorder=0,
                label="Pareto front (learned configs)")
    ax.set_ylabel("task accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def pareto_accuracy(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """pareto_accuracy_memory.png and pareto_accuracy_throughput.png for the finetune lines that have a task
    accuracy (one panel per model, dataset and budget)."""
    from harness.aggregate import budget_label, data_label

    quality = table["quality_measured"].astype(bool) if "quality_measured" in table else pd.Series(False, table.index)
    lines = table[quality & (table.get("scenario") == "finetune")]
    if "task_accuracy" not in lines or lines["task_accuracy"].isna().all():
        return []
    lines = lines[lines["task_accuracy"].notna()]
    memory = table[~quality]
    mem_col = "peak_allocated" if lines["peak_allocated"].notna().any() else "cpu_live_peak"
    timed, source = _with_timing(lines, memory)
    written = []
    for data, x_col, x_label, minimize, scale, name in (
            (lines, mem_col, f"{mem_col} (GiB)", True, GIB, "pareto_accuracy_memory.png"),
            (timed[timed["throughput"].notna()], "throughput", f"throughput, tokens/s ({source})", False, 1.0,
             "pareto_accuracy_throughput.png")):
        if data.empty:
            continue
        panels = list(data.groupby(["model", "dataset", "budget_tokens"], sort=False, dropna=False))
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.6 * len(panels)), squeeze=False)
        for ax, (_, sub) in zip(axes[:, 0], panels, strict=True):
            _panel(ax, sub, x_col, scale, minimize)
            first = sub.iloc[0]
            ax.set_title(f"{first['model']} finetuned on {data_label(first)}, {first['gpu']}; budget "
                         f"{budget_label(first)}; {int(sub['task_accuracy_n'].min())}+ seeds per config", fontsize=9)
            ax.set_xlabel(x_label)
        fig.suptitle("task accuracy vs " + ("peak memory (upper-left is better)" if minimize else
                                            "throughput (upper-right is better)")
                     + "\nbars: std over seeds; hollow grey: did not learn (verdict of the target loss)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out_dir / name)
    return written
