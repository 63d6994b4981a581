"""Pareto plots (eval loss against peak memory and against throughput, front marked) and the stacked memory
breakdown per method. Input: the tidy table of harness.aggregate (one line per config, medians over repeats)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

GIB = 2**30


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
                           else "") + (f" {r['settings']}" if r.get("settings") else "") for _, r in frame.iterrows()]


def _unit(values: pd.Series) -> tuple[float, str]:
    return (GIB, "GiB") if values.max() >= GIB / 2 else (2**20, "MiB")


def _memory_column(table: pd.DataFrame) -> tuple[str, str]:
    if table["peak_allocated"].notna().any():
        return "peak_allocated", "peak allocated (torch.cuda)"
    return "cpu_live_peak", "peak live tensors (CPU live-tensor probe)"


def _pareto_plot(table, x_col, x_label, minimize_x, scale, path, title) -> Path | None:
    data = table[(table["status"] == "ok") & table[x_col].notna() & table["eval_loss"].notna()]
    if data.empty:
        return None
    models = list(dict.fromkeys(data["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = data[data["model"] == model].reset_index(drop=True)
        labels = _labels(sub)
        xs, ys = (sub[x_col] / scale).tolist(), sub["eval_loss"].tolist()
        front = pareto_front(list(zip(xs, ys, strict=True)), minimize_x)
        for i, row in sub.iterrows():
            xerr = None
            if f"{x_col}_min" in sub and pd.notna(row.get(f"{x_col}_min")):
                xerr = [[xs[i] - row[f"{x_col}_min"] / scale], [row[f"{x_col}_max"] / scale - xs[i]]]
            yerr = None
            if "eval_loss_min" in sub and pd.notna(row.get("eval_loss_min")):
                yerr = [[ys[i] - row["eval_loss_min"]], [row["eval_loss_max"] - ys[i]]]
            ax.errorbar(xs[i], ys[i], xerr=xerr, yerr=yerr, fmt="o", ms=7, capsize=3,
                        mfc="tab:red" if i in front else "white", mec="tab:red" if i in front else "tab:blue",
                        ecolor="gray")
            ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ordered = sorted(front, key=lambda i: xs[i])
        ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], "--", color="tab:red", lw=1, label="Pareto front")
        ax.set_title(f"{model}")
        ax.set_xlabel(x_label)
        ax.set_ylabel("eval loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto(table: pd.DataFrame, out_dir: Path, throughput: bool = True) -> list[Path]:
    """pareto_memory.png and (unless throughput=False: rows from different GPUs) pareto_throughput.png."""
    mem_col, mem_label = _memory_column(table)
    scale, unit = _unit(table[mem_col].dropna()) if table[mem_col].notna().any() else (GIB, "GiB")
    written = [
        _pareto_plot(table, mem_col, f"{mem_label}, {unit}", True, scale, out_dir / "pareto_memory.png",
                     "eval loss vs peak memory\n(lower-left is better; red: Pareto front; bars: spread over repeats)"),
        _pareto_plot(table, "tokens_per_s", "throughput, tokens/s", False, 1.0, out_dir / "pareto_throughput.png",
                     "eval loss vs throughput\n(lower-right is better; red: Pareto front)") if throughput else None,
    ]
    return [p for p in written if p is not None]


def memory_breakdown(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    mem_col, mem_label = _memory_column(table)
    data = table[(table["status"] == "ok") & table["weights"].notna()]
    if data.empty:
        return []
    parts = ["weights", "grads", "optimizer_state", "activations"]
    scale, unit = _unit(data[[mem_col] + parts].max(axis=1, numeric_only=True).dropna())
    models = list(dict.fromkeys(data["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(1.2 * max(4, len(data) / len(models)) * len(models) + 2, 4.5),
                             squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sub = data[data["model"] == model].reset_index(drop=True)
        labels = _labels(sub)
        bottom = [0.0] * len(sub)
        for part in parts:
            values = (sub[part].fillna(0) / scale).tolist()
            ax.bar(labels, values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if sub[mem_col].notna().any():
            other = [max(0.0, (p or 0) / scale - b) for p, b in zip(sub[mem_col].tolist(), bottom, strict=True)]
            ax.bar(labels, other, bottom=bottom, label="other / temporaries", color="lightgray")
            ax.scatter(labels, (sub[mem_col] / scale).tolist(), marker="_", s=400, color="black", zorder=3,
                       label=mem_label)
        ax.set_title(model)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"memory breakdown per method\nparts: live-tensor probe / storages; black bar: {mem_label}",
                 fontsize=9)
    fig.tight_layout()
    path = out_dir / "memory_breakdown.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
