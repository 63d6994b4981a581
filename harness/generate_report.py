"""The generate scenario in reports: one line per generate row (its method, model, batch and what it measured),
its fidelity verdict (harness/verdict.py: fidelity_verdict), and three plots:

- fidelity_vs_memory.png: top-1 agreement with the full cache against peak allocated memory and against KV-cache
  bytes, one panel per model;
- fidelity_vs_throughput.png: the same against decode throughput at the row's batch;
- max_batch.png: the largest batch each method fits in the memory budget (infer.batch_size=auto rows), with its
  decode throughput, one panel per model and budget.
A cache whose fidelity collapsed is hollow and grey, with its verdict, and never on the Pareto front: it is no
trade-off. Rows of other scenarios are left to harness.aggregate's tables.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.plots import pareto_front  # noqa: E402
from harness.verdict import fidelity_verdict  # noqa: E402

GIB = 2**30
COLUMNS = ["model", "dataset", "gpu", "method", "transforms", "status", "batch_size", "memory_budget", "prompt_len",
           "decode_len", "peak_allocated", "cpu_live_peak", "kv_cache_bytes", "kv_bytes_per_token", "ttft_s",
           "prefill_tokens_per_s", "decode_ms", "decode_ms_p20", "decode_ms_p80", "decode_tokens_per_s",
           "batch1_decode_tokens_per_s", "batch1_kv_cache_bytes", "fidelity_ppl", "fidelity_ppl_full", "fidelity_kl",
           "fidelity_top1", "fidelity_tokens", "fidelity_windows", "fidelity_len", "fidelity_verdict",
           "fidelity_verdict_reason"]


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The generate rows (those with a `cache` column), latest per run_id already, with their fidelity verdicts."""
    if frame.empty or "cache" not in frame:
        return pd.DataFrame(columns=COLUMNS)
    rows = frame[frame["cache"].notna()].copy()
    verdicts = [fidelity_verdict(r) for r in rows.to_dict("records")]
    rows["fidelity_verdict"] = [v for v, _ in verdicts]
    rows["fidelity_verdict_reason"] = [reason for _, reason in verdicts]
    rows["transforms"] = rows["transforms"].map(lambda t: ",".join(t) if isinstance(t, list) else t)
    return rows[[c for c in COLUMNS if c in rows]].reset_index(drop=True)


def markdown(lines: pd.DataFrame) -> str:
    if lines.empty:
        return ""
    shown = lines.astype(object).where(lines.notna(), "-")
    header = list(shown.columns)
    body = ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in shown.itertuples(index=False)]
    return "\n".join(["## scenario=generate", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header), *body, ""])


def console(rows: list[dict]) -> str:
    """The generate rows of a sweep as the console shows them after it (empty when there are none)."""
    rows = [r for r in rows if r.get("cache")]
    if not rows:
        return ""

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    header = ["model", "method", "status", "batch", "KV cache MiB", "peak MiB", "TTFT s", "decode ms", "decode tok/s",
              "top-1", "KL"]
    lines = [header] + [[str(r.get("model")), str(r.get("method")), str(r.get("status")), str(r.get("batch_size")),
                         number(r.get("kv_cache_bytes") and r["kv_cache_bytes"] / 2**20, ",.2f"),
                         number((r.get("peak_allocated") or r.get("cpu_live_peak") or 0) / 2**20, ",.1f"),
                         number(r.get("ttft_s"), ".3f"), number(r.get("decode_ms"), ".2f"),
                         number(r.get("decode_tokens_per_s"), ",.0f"), number(r.get("fidelity_top1"), ".4f"),
                         number(r.get("fidelity_kl"), ".2e")] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\nscenario=generate\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                                                for line in lines)


def _unit(values: pd.Series) -> tuple[float, str]:
    return (GIB, " (GiB)") if values.max() >= GIB / 2 else (2**20, " (MiB)")


def _panel_title(sub: pd.DataFrame) -> str:
    """Model, data, device and the fidelity text (windows x tokens): what a reader needs to compare two panels."""
    first = sub.iloc[0]
    where = ", ".join(str(first[c]) for c in ("dataset", "gpu") if c in sub and pd.notna(first[c]))
    text = ""
    if {"fidelity_windows", "fidelity_len"} <= set(sub) and pd.notna(first["fidelity_len"]):
        text = f"\nfidelity: {int(first['fidelity_windows'])} held-out windows x {int(first['fidelity_len'])} tokens"
    return f"{first['model']}" + (f" ({where})" if where else "") + text


def _fidelity_plot(lines: pd.DataFrame, xs: list[tuple[str, str, bool]], path: Path, title: str) -> list[Path]:
    data = lines[(lines["status"] == "ok") & lines["fidelity_top1"].notna()] if "fidelity_top1" in lines else lines[:0]
    if data.empty or any(c not in data for c, _, _ in xs):
        return []
    data = data[data[[c for c, _, _ in xs]].notna().all(axis=1)]
    if data.empty:
        return []
    models = sorted(data["model"].unique())
    fig, axes = plt.subplots(len(models), len(xs), figsize=(5.2 * len(xs), 3.6 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        sub = data[data["model"] == model].reset_index(drop=True)
        for ax, (column, label, minimize) in zip(row, xs, strict=True):
            scale, unit = _unit(sub[column]) if "bytes" in column or "peak" in column else (1.0, "")
            good = sub["fidelity_verdict"] != "collapsed"
            for i, r in sub.iterrows():
                style = dict(color=plt.get_cmap("tab10")(i % 10)) if good[i] else dict(facecolors="none",
                                                                                        edgecolors="0.55")
                ax.scatter(r[column] / scale, r["fidelity_top1"], marker="osD^vP*Xhp"[i % 10], s=45,
                           label=f"{r['method']} ({r['fidelity_verdict']})", **style)
            points = [(r[column], 1 - r["fidelity_top1"]) for _, r in sub[good].iterrows()]
            front = sub[good].iloc[pareto_front(points, minimize)] if points else sub[:0]
            front = front.sort_values(column)
            ax.plot(front[column] / scale, front["fidelity_top1"], color="0.3", lw=0.8, ls="--")
            ax.set_xlabel(label + unit)
            ax.set_ylabel("top-1 agreement with the full cache")
            ax.set_title(_panel_title(sub), fontsize=8)
        row[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def max_batch(lines: pd.DataFrame, path: Path) -> list[Path]:
    data = lines[lines["memory_budget"].notna() & (lines["status"] == "ok")] if "memory_budget" in lines else lines[:0]
    if data.empty:
        return []
    panels = list(data.groupby(["model", "memory_budget"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, ((model, budget), sub) in zip(axes[0], panels, strict=True):
        bars = ax.bar(sub["method"], sub["batch_size"], color="tab:blue")
        for bar, tps in zip(bars, sub["decode_tokens_per_s"], strict=True):
            ax.annotate(f"{tps:,.0f} tok/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_ylabel("largest batch within the budget")
        ax.set_title(f"{model}, budget {budget / GIB:g} GiB (decode tokens/s at that batch)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plots(lines: pd.DataFrame, out_dir: Path) -> list[Path]:
    if lines.empty:
        return []
    memory = [("peak_allocated", "peak allocated (torch.cuda)", True),
              ("kv_cache_bytes", "KV-cache bytes after prompt + decode", True)]
    if lines.get("peak_allocated", pd.Series(dtype=float)).isna().all():
        memory[0] = ("cpu_live_peak", "peak live tensors (CPU probe)", True)
    written = _fidelity_plot(lines, memory, out_dir / "fidelity_vs_memory.png",
                             "fidelity vs memory (hollow grey: fidelity collapsed, not a trade-off)")
    written += _fidelity_plot(lines, [("decode_tokens_per_s", "decode tokens/s at the row's batch", False)],
                              out_dir / "fidelity_vs_throughput.png", "fidelity vs decode throughput")
    return written + max_batch(lines, out_dir / "max_batch.png")
