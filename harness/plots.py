"""Report plots from the tidy table of harness.aggregate (one line per config).

Quality lines (`quality_measured`): final eval loss against peak memory and against throughput, one panel per model,
dataset (and tokenizer), scenario and budget, the GPU, budget and seeds in its title; error bars are the std over seeds; configs that
did not learn (harness/verdict.py) are hollow and grey with their verdict, and the Pareto front runs through learned
configs only. Each config has its own colour and marker in a legend, so no label sits on a point.
Memory lines: memory and throughput only (the stacked breakdown per method, throughput bars); never a loss axis.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.aggregate import PANEL_KEYS, budget_label, data_label, set_settings  # noqa: E402

GIB = 2**30
MARKERS = "osD^vP*Xhp<>8Hd"
NOT_LEARNED = "0.55"  # grey of the configs that did not learn


def pareto_front(points: list[tuple[float, float]], minimize_x: bool) -> list[int]:
    """Indices of points no other point beats on both axes (y = loss, lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x if minimize_x else x2 >= x) and y2 <= y and (x2, y2) != (x, y)
                        for x2, y2 in points)
        if not dominated:
            front.append(i)
    return front


def _labels(frame: pd.DataFrame) -> list[str]:
    """Method names; transforms are appended only where one method appears with several transform sets, and the
    swept settings (harness.aggregate.swept_keys) where the sweep has any."""
    variants = frame.groupby("method")["transforms"].nunique()
    return [r["method"] + (f" +{r['transforms']}" if variants[r["method"]] > 1 and r["transforms"] not in ("", "-")
                           else "") + _settings_text(r.get("settings")) for _, r in frame.iterrows()]


def _settings_text(settings) -> str:
    """The settings a label shows: those the row's command line set (key=- means the method's own value), wrapped so
    that a long override (a list of LoRA targets) does not push the panel out of the figure."""
    lines = textwrap.wrap(set_settings(settings), 32, break_long_words=True)
    return "" if not lines else (" " + lines[0] if len(lines) == 1 else "\n" + "\n".join(lines))


def _style(i: int) -> tuple:
    """Colour and marker of the i-th config of a panel: 10 colours x 15 markers before a pair repeats."""
    return plt.get_cmap("tab10")(i % 10), MARKERS[(i // 10 + i) % len(MARKERS)]


def _unit(values: pd.Series) -> tuple[float, str]:
    return (GIB, "GiB") if values.max() >= GIB / 2 else (2**20, "MiB")


def _memory_column(table: pd.DataFrame) -> tuple[str, str]:
    if table["peak_allocated"].notna().any():
        return "peak_allocated", "peak allocated (torch.cuda)"
    return "cpu_live_peak", "peak live tensors (CPU live-tensor probe)"


def _seeds(panel: pd.DataFrame) -> str:
    # int(): next to memory rows in one table the counts are floats (NaN for those rows)
    low, high = int(panel["eval_loss_n"].min()), int(panel["eval_loss_n"].max())
    return f"{low} seed{'s' if high > 1 else ''}" if low == high else f"{low}-{high} seeds"


def _quality_panel(ax, sub: pd.DataFrame, x_col: str, scale: float, minimize_x: bool) -> None:
    """One panel: learned configs in colour with std bars and the front through them; the others hollow grey, at
    the top edge under an arrow where their loss is off the learned configs' range."""
    labels, learned = _labels(sub), (sub["verdict"] == "learned").tolist()
    xs, ys = (sub[x_col] / scale).tolist(), sub["eval_loss"].tolist()
    stds = [s if pd.notna(s) else 0.0 for s in sub["eval_loss_std"]]
    shown = [i for i in range(len(sub)) if learned[i]] or [i for i in range(len(sub)) if pd.notna(ys[i])]
    low = min((ys[i] - stds[i] for i in shown), default=0.0)
    high = max((ys[i] + stds[i] for i in shown), default=1.0)
    pad = max(high - low, 0.02) * 0.15
    top = high + pad
    for i, row in sub.reset_index(drop=True).iterrows():
        color, marker = _style(i)
        if learned[i]:
            best = f" [{row['vs_best']}]" if row["vs_best"] in ("best", "≈ best") else ""
            ax.errorbar(xs[i], ys[i], yerr=stds[i] or None, fmt=marker, ms=7, capsize=3, color=color,
                        label=f"{labels[i]}{best}")
            continue
        off = pd.isna(ys[i]) or ys[i] > top
        loss = "no eval loss" if pd.isna(ys[i]) else f"eval {ys[i]:.3g}"
        ax.errorbar(xs[i], top if off else ys[i], yerr=None if off else stds[i] or None, fmt=marker, ms=7,
                    capsize=3, mfc="none", mec=NOT_LEARNED, color=NOT_LEARNED,
                    label=f"{labels[i]}: {row['verdict']}" + (f" ({loss}, off the axis)" if off else ""))
        if off:  # an arrow above the marker: the loss is further up
            ax.annotate("", (xs[i], top + 0.9 * pad), (xs[i], top + 0.35 * pad),
                        arrowprops={"arrowstyle": "->", "color": NOT_LEARNED})
    ok = [i for i in range(len(sub)) if learned[i] and pd.notna(xs[i])]
    front = sorted((ok[j] for j in pareto_front([(xs[i], ys[i]) for i in ok], minimize_x)), key=lambda i: xs[i])
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", lw=1, zorder=0,
                label="Pareto front (learned configs)")
    ax.set_ylim(low - pad, top + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _quality_plot(table, x_col, x_label, minimize_x, scale, path, title) -> Path | None:
    data = table[table[x_col].notna() & table["verdict"].notna()]
    if data.empty:
        return None
    panels = list(data.groupby(PANEL_KEYS, sort=False, dropna=False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.6 * len(panels)), squeeze=False)
    for ax, (_, sub) in zip(axes[:, 0], panels, strict=True):
        _quality_panel(ax, sub.reset_index(drop=True), x_col, scale, minimize_x)
        first = sub.iloc[0]
        gpus = ", ".join(dict.fromkeys(sub["gpu"].astype(str)))
        ax.set_title(f"{first['model']} on {data_label(first)} ({first['scenario']}), {gpus}\n"
                     f"budget {budget_label(first)}; {_seeds(sub)} per config", fontsize=9)
        ax.set_xlabel(x_label)
        ax.set_ylabel("final eval loss (nats/token)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Quality lines only: pareto_memory.png and, where every run's timing is comparable (not run side by side),
    pareto_throughput.png. Memory lines give nothing here: their loss is no quality measurement."""
    table = table[table["quality_measured"].astype(bool)] if "quality_measured" in table else table.iloc[:0]
    if table.empty:
        return []
    mem_col, mem_label = _memory_column(table)
    scale, unit = _unit(table[mem_col].dropna()) if table[mem_col].notna().any() else (GIB, "GiB")
    note = "bars: std over seeds; hollow grey: did not learn (verdict in the legend), never on the front"
    written = [_quality_plot(table, mem_col, f"{mem_label}, {unit}", True, scale, out_dir / "pareto_memory.png",
                             f"final eval loss vs peak memory (lower-left is better)\n{note}")]
    timed = table[table["timing_comparable"].astype(bool)]
    if not timed.empty:
        written.append(_quality_plot(timed, "tokens_per_s", "throughput, tokens/s", False, 1.0,
                                     out_dir / "pareto_throughput.png",
                                     f"final eval loss vs throughput (lower-right is better)\n{note}"))
    return [p for p in written if p is not None]


def _memory_panels(data: pd.DataFrame, width: float) -> tuple:
    """A figure with one panel per model and scenario (the GPU in its title), and [(axes, the panel's lines)]."""
    panels = list(data.groupby(["model", "scenario"], sort=False))
    widest = max(len(sub) for _, sub in panels)
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, figsize=(max(width * widest, 5) + 2.5, 4.4 * len(panels)))
    for ax, ((model, scenario), sub) in zip(axes[:, 0], panels, strict=True):
        ax.set_title(f"{model} ({scenario}), {', '.join(dict.fromkeys(sub['gpu'].astype(str)))}", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.grid(axis="y", alpha=0.3)
    return fig, [(ax, sub.reset_index(drop=True)) for ax, (_, sub) in zip(axes[:, 0], panels, strict=True)]


def _flag_runs_that_did_not_learn(ax, sub: pd.DataFrame, labels: list[str], heights: list[float]) -> None:
    """Above each bar whose run's training loss did not fall (verdict diverged / not_learning / mixed), the verdict in
    red: its memory is real, but that config at those settings is no usable trade-off."""
    for label, height, verdict in zip(labels, heights, sub.get("verdict", [None] * len(sub)), strict=True):
        if isinstance(verdict, str) and verdict != "learned":
            ax.annotate(verdict, (label, height), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", rotation=90, fontsize=7, color="tab:red")


def memory_breakdown(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """memory_breakdown.png: per method, the probe's parts stacked (weights, grads, optimizer state, activations,
    the rest of the peak as other / temporaries) and the peak as a black bar; one panel per model and scenario."""
    if table.empty:
        return []
    mem_col, mem_label = _memory_column(table)
    data = table[(table["status"] == "ok") & table["weights"].notna()]
    if data.empty:
        return []
    parts = ["weights", "grads", "optimizer_state", "activations"]
    scale, unit = _unit(data[[mem_col] + parts].max(axis=1, numeric_only=True).dropna())
    fig, panels = _memory_panels(data, 0.45)
    for ax, sub in panels:
        labels = _labels(sub)
        bottom = [0.0] * len(sub)
        for part in parts:
            values = (sub[part].fillna(0) / scale).tolist()
            ax.bar(labels, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if sub[mem_col].notna().any():
            other = [max(0.0, (p or 0) / scale - b) for p, b in zip(sub[mem_col].tolist(), bottom, strict=True)]
            ax.bar(labels, other, bottom=bottom, label="other / temporaries", color="lightgray")
            ax.scatter(labels, (sub[mem_col] / scale).tolist(), marker="_", s=300, color="black", zorder=3,
                       label=mem_label)
        _flag_runs_that_did_not_learn(ax, sub, labels, [max(b, (p or 0) / scale) for b, p in
                                                        zip(bottom, sub[mem_col].tolist(), strict=True)])
        ax.set_ylabel(unit)
    fig.axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"memory breakdown per method\nparts: live-tensor probe / storages; black bar: {mem_label}; red: "
                 "the run's training loss did not fall",
                 fontsize=9)
    return _save(fig, out_dir / "memory_breakdown.png")


def throughput_bars(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """throughput.png: tokens/s per method (median over repeats, whiskers min to max); one panel per model and
    scenario. Times from different GPUs sit in different panels' titles, never on one bar chart's scale by chance."""
    data = table[(table["status"] == "ok") & table["tokens_per_s"].notna()] if not table.empty else table
    if data.empty:
        return []
    fig, panels = _memory_panels(data, 0.45)
    for ax, sub in panels:
        values = sub["tokens_per_s"].tolist()
        lows, highs = sub.get("tokens_per_s_min", sub["tokens_per_s"]), sub.get("tokens_per_s_max", sub["tokens_per_s"])
        low = [v - m if pd.notna(m) else 0.0 for v, m in zip(values, lows, strict=True)]
        high = [m - v if pd.notna(m) else 0.0 for v, m in zip(values, highs, strict=True)]
        ax.bar(_labels(sub), values, yerr=[low, high], capsize=2, color="tab:blue")
        _flag_runs_that_did_not_learn(ax, sub, _labels(sub), [v + h for v, h in zip(values, high, strict=True)])
        ax.set_ylabel("tokens/s")
    fig.suptitle("throughput per method (median over repeats; whiskers: min to max)", fontsize=9)
    return _save(fig, out_dir / "throughput.png")


def _save(fig, path: Path) -> list[Path]:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends beside the panels and long titles stay in the image
    plt.close(fig)
    return [path]
