"""Rows → tidy tables (CSV + Markdown) and plots. Reads rows only; never reruns anything.

`python -m harness.aggregate [rows.jsonl or folder ...]` writes a report next to each rows file
(default: every rows.jsonl under results/).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness import PROJECT_ROOT
from harness.config import OPERATIONAL_KEYS
from harness.results import COLUMNS, read_rows

GROUP_KEYS = ["model", "dataset", "method", "scenario", "gpu", "device", "dtype", "batch_size", "seq_len"]
METRICS = ["peak_allocated", "peak_reserved", "nvml_process_peak", "cpu_live_peak", "weights", "grads",
           "optimizer_state", "activations", "step_ms", "tokens_per_s", "mfu", "train_loss", "eval_loss", "eval_ppl"]


def _settings_of(row: dict) -> dict[str, str]:
    overrides = row.get("overrides")
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o) if isinstance(overrides, list) else {}


def swept_keys(rows: list[dict], own_columns=("model", "method")) -> list[str]:
    """The sweep's axes that have no column of their own: the override keys whose values differ across the rows
    (a `train.batch_size=range(1,4)` sweep gives train.batch_size), except the keys that change how a job runs, not
    what it measures (OPERATIONAL_KEYS: rows that differ only there are repeats of one config)."""
    settings = [_settings_of(r) for r in rows]
    keys = dict.fromkeys(k for s in settings for k in s)
    return [k for k in keys if k not in own_columns and k not in OPERATIONAL_KEYS
            and len({s.get(k) for s in settings}) > 1]


def settings_label(row: dict, keys: list[str]) -> str:
    """The row's values of the swept keys, `key=value` each ("-" where its command line left the key out)."""
    settings = _settings_of(row)
    return " ".join(f"{k}={settings.get(k, '-')}" for k in keys)


def committed_row_files(root: Path = PROJECT_ROOT / "results") -> list[Path]:
    """The rows committed to the repository: results/<device>/*.rows.jsonl (not raw runs, not failed attempts)."""
    return sorted(p for p in root.glob("*/*.rows.jsonl") if p.parent.name not in ("runs", "baselines"))


def load_rows(paths: list[Path]) -> pd.DataFrame:
    """All rows of the given rows.jsonl files; the latest row wins per run_id (a forced rerun replaces)."""
    rows = [r for p in paths for r in read_rows(p)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(rows).drop(columns=["config"], errors="ignore")
    frame = frame.drop_duplicates("run_id", keep="last")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame


def peak_memory(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """The peak to plot and its probe's name: CUDA allocated where any row has it, else the CPU live-tensor peak."""
    if frame["peak_allocated"].notna().any():
        return frame["peak_allocated"], "peak allocated (torch.cuda)"
    return frame["cpu_live_peak"], "peak live tensors (CPU probe)"


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per config: median over repeats of each metric, with min/max spread and the repeat count."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["transforms"] = frame["transforms"].map(lambda t: "+".join(t) if isinstance(t, list) else (t or ""))
    records = frame.to_dict("records")
    swept = swept_keys(records, own_columns=("model", "method", "method.transforms"))
    frame["settings"] = [settings_label(r, swept) for r in records]
    keys = [k for k in GROUP_KEYS if k in frame] + ["transforms", "settings"]
    frame[keys] = frame[keys].fillna("-")
    ok = frame[frame["status"] == "ok"]
    parts = []
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        line = dict(zip(keys, key, strict=True))
        good = ok.loc[ok.index.intersection(group.index)]
        line["status"] = "ok" if len(good) == len(group) else "/".join(sorted(set(group["status"])))
        line["repeats"] = len(group)
        line["error"] = next((e for e in group["error"] if isinstance(e, str)), "")
        for metric in METRICS:
            values = pd.to_numeric(good[metric], errors="coerce").dropna() if metric in good else pd.Series()
            line[metric] = values.median() if len(values) else None
            if metric in ("step_ms", "tokens_per_s", "eval_loss", "peak_allocated") and len(values) > 1:
                line[f"{metric}_min"], line[f"{metric}_max"] = values.min(), values.max()
        parts.append(line)
    return pd.DataFrame(parts)


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


def to_markdown(table: pd.DataFrame) -> str:
    shown = [c for c in ["model", "method", "transforms", "settings", "status", "repeats", "peak_allocated", "cpu_live_peak",
                         "weights", "grads", "optimizer_state", "activations", "step_ms", "tokens_per_s", "mfu",
                         "eval_loss"] if c in table and (c != "settings" or table[c].astype(bool).any())]

    def cell(col, v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "-"
        if col in ("peak_allocated", "cpu_live_peak", "weights", "grads", "optimizer_state", "activations"):
            return f"{v / 2**20:,.1f}"
        if col == "mfu":
            return f"{100 * v:.1f} %"
        if isinstance(v, float):
            return f"{v:,.4g}" if col != "tokens_per_s" else f"{v:,.0f}"
        return str(v)

    header = [c + (" (MiB)" if c in ("peak_allocated", "cpu_live_peak", "weights", "grads", "optimizer_state",
                                     "activations") else "") for c in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(shown)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(cell(c, r[c]) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows_path: Path, out_dir: Path) -> list[Path]:
    from harness.plots import memory_breakdown, pareto

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
    table.to_csv(written[0], index=False)
    written[1].write_text(to_markdown(table))
    written += pareto(table, out_dir)
    written += memory_breakdown(table, out_dir)
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
