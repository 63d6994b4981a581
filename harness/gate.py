"""The regression gate on memory numbers.

    python -m harness.gate check  --rows R.jsonl [R2.jsonl ...] --baseline results/baselines/cpu.csv [--time]
    python -m harness.gate update --rows R.jsonl [...]          --baseline results/baselines/cpu.csv

Rows and baseline lines are keyed by (device, model, dataset, method, scenario, batch_size, seq_len). For each key
the latest memory-sweep row (quality runs are left out) is compared with the baseline, metric by metric, with tolerances set from measured noise (TOLERANCES).
Reported: regressions, improvements, status changes (ok → oom), keys that vanished or appeared. Exit code 1 on a
regression, a status change away from ok, or a vanished key. Time is gated only with --time, and then a timing
metric is a regression only when the two latest rows of that key (two consecutive runs) both exceed the tolerance
(TorchBench's lesson: one slow run is noise). `update` rewrites the baseline and prints the diff; nothing else
ever writes a baseline.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.results import read_rows

KEY = ["device", "model", "dataset", "method", "scenario", "batch_size", "seq_len"]


@dataclass(frozen=True)
class Tolerance:
    relative: float
    devices: tuple[str, ...]  # where the metric is gated
    timing: bool = False


# CPU live-tensor bytes are exact (identical across processes: tests/test_reliability.py); the CUDA allocated peak is
# deterministic for a config but moves with library versions, so 0.5 %; reserved and NVML include allocator caching
# and the CUDA context, which vary run to run by a few percent.
TOLERANCES = {
    "weights": Tolerance(0.0, ("cpu", "cuda")),
    "grads": Tolerance(0.0, ("cpu", "cuda")),
    "optimizer_state": Tolerance(0.0, ("cpu", "cuda")),
    "activations": Tolerance(0.0, ("cpu",)),
    "cpu_live_peak": Tolerance(0.0, ("cpu",)),
    "peak_allocated": Tolerance(0.005, ("cuda",)),
    "peak_reserved": Tolerance(0.05, ("cuda",)),
    "nvml_process_peak": Tolerance(0.10, ("cuda",)),
    "step_ms": Tolerance(0.10, ("cpu", "cuda"), timing=True),
}
STATUS_OK = "ok"


class BaselineError(ValueError):
    """A baseline file that cannot be read as a baseline: one line saying why."""


def load_baseline(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise BaselineError(f"baseline {path} does not exist; create it with: python -m harness.gate update ...")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BaselineError(f"baseline {path} is not a readable CSV ({' '.join(str(e).split())[:120]})") from None
    missing = [c for c in KEY + ["status"] if c not in frame]
    if missing:
        raise BaselineError(f"baseline {path} lacks column(s) {', '.join(missing)}; expected key columns {KEY}")
    if frame.duplicated(KEY).any():
        raise BaselineError(f"baseline {path} has duplicate keys; regenerate it with `update`")
    return frame


def _rows_frame(paths: list[Path]) -> pd.DataFrame:
    # Quality runs share their key with the memory sweeps of the same config but run other recipes, budgets and
    # tokenizers, several at once: the gate guards memory sweeps, so a quality row would only displace their numbers.
    rows = [r for p in paths for r in read_rows(p) if not r.get("quality_measured")]
    if not rows:
        raise BaselineError(f"no rows in {', '.join(map(str, paths))}")
    frame = pd.DataFrame(rows).drop(columns=["config"], errors="ignore")
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *KEY, "status", "timestamp"])))
    return frame.sort_values("timestamp", kind="stable")


VERSIONS = ["pkg_torch", "pkg_transformers"]


def latest_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    columns = KEY + ["status"] + list(TOLERANCES) + ["git_sha"] + VERSIONS
    return frame.reindex(columns=list(dict.fromkeys([*frame.columns, *columns]))).drop_duplicates(
        KEY, keep="last")[columns]


def version_note(rows: pd.DataFrame, baseline: pd.DataFrame) -> str:
    """Exact byte counts follow the library code; say so when the versions differ from the baseline's."""
    notes = []
    for col in VERSIONS:
        if col in baseline and col in rows:
            old, new = set(baseline[col].dropna().astype(str)), set(rows[col].dropna().astype(str))
            if old and new and old != new:
                notes.append(f"{col.removeprefix('pkg_')} {'/'.join(sorted(old))} -> {'/'.join(sorted(new))}")
    return ("note: versions differ from the baseline's (" + "; ".join(notes) + ")") if notes else ""


def _key_text(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def compare(rows: pd.DataFrame, baseline: pd.DataFrame, gate_time: bool = False) -> pd.DataFrame:
    """One line per finding: kind (regression, improvement, status, vanished, appeared, pending), key, metric, ..."""
    current = latest_per_key(rows).set_index(KEY)
    base = baseline.set_index(KEY)
    findings = []

    def add(kind, key, metric="", before=None, after=None, change=None, tolerance=None):
        findings.append({"kind": kind, "key": _key_text(key), "metric": metric, "baseline": before, "current": after,
                         "change_%": None if change is None else round(100 * change, 3),
                         "tolerance_%": None if tolerance is None else 100 * tolerance})

    for key in base.index.difference(current.index):
        add("vanished", key)
    for key in current.index.difference(base.index):
        add("appeared", key)
    for key in base.index.intersection(current.index):
        b, c = base.loc[key], current.loc[key]
        if b["status"] != c["status"]:
            add("status", key, "status", b["status"], c["status"])
            continue
        if c["status"] != STATUS_OK:
            continue
        for metric, tol in TOLERANCES.items():
            if key[0] not in tol.devices or (tol.timing and not gate_time) or metric not in base:
                continue
            before, after = b.get(metric), c.get(metric)
            if pd.isna(before) or pd.isna(after):
                continue
            change = (after - before) / before if before else (0.0 if after == before else float("inf"))
            if tol.timing:
                history = rows[(rows[KEY].astype(str) == pd.Series(key, index=KEY).astype(str)).all(axis=1)]
                last_two = pd.to_numeric(history[history["status"] == STATUS_OK][metric]).tail(2).tolist()
                violations = sum(v > before * (1 + tol.relative) for v in last_two)
                if violations == 2:
                    add("regression", key, metric, before, after, change, tol.relative)
                elif violations == 1 and last_two[-1] > before * (1 + tol.relative):
                    add("pending", key, metric, before, after, change, tol.relative)
                continue
            if change > tol.relative:
                add("regression", key, metric, before, after, change, tol.relative)
            elif change < -tol.relative:
                add("improvement", key, metric, before, after, change, tol.relative)
    return pd.DataFrame(findings, columns=["kind", "key", "metric", "baseline", "current", "change_%", "tolerance_%"])


def failing(findings: pd.DataFrame) -> pd.DataFrame:
    bad_status = (findings["kind"] == "status") & (findings["baseline"] == STATUS_OK)
    return findings[(findings["kind"].isin(["regression", "vanished"])) | bad_status]


def check(rows_paths: list[Path], baseline_path: Path, gate_time: bool = False) -> int:
    rows, baseline = _rows_frame(rows_paths), load_baseline(baseline_path)
    findings = compare(rows, baseline, gate_time)
    bad = failing(findings)
    n_keys = len(baseline)
    if note := version_note(rows, baseline):
        print(note)
    if findings.empty:
        print(f"gate: pass — {n_keys} key(s) of {baseline_path.name} within tolerance")
        return 0
    print(findings.to_string(index=False))
    if bad.empty:
        print(f"gate: pass — no regression against {baseline_path.name} ({len(findings)} finding(s) above)")
        return 0
    print(f"gate: FAIL — {len(bad)} regression(s) against {baseline_path.name}")
    return 1


def update(rows_paths: list[Path], baseline_path: Path) -> int:
    new = latest_per_key(_rows_frame(rows_paths)).sort_values(KEY).reset_index(drop=True)
    if baseline_path.exists():
        old = load_baseline(baseline_path)
        findings = compare(_rows_frame(rows_paths), old)
        print(f"changes to {baseline_path}:")
        print(findings.to_string(index=False) if not findings.empty else "  (none beyond tolerance)")
    baseline_path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(baseline_path, index=False)
    print(f"wrote {baseline_path} ({len(new)} keys)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "update"])
    parser.add_argument("--rows", type=Path, nargs="+", required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--time", action="store_true", help="also gate step time (two consecutive violations)")
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            return check(args.rows, args.baseline, args.time)
        return update(args.rows, args.baseline)
    except BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
