"""The estimator against the committed GPU rows: `python -m harness.estimate_check [--out results/estimate_check.md]`.

For every row that ended ok in results/{h100,h200}/ of the sweeps methods_gpu, llama7b_* and default_gpu, the job
is rebuilt from the row's own config (its `config` field) and estimated on this machine (no GPU); the estimate's
peak is set beside the row's measured peak_allocated (torch.cuda.max_memory_allocated). Rows with the same config
share one estimate. Also recomputed here: CUDA_CONTEXT (harness.estimate), the median of nvml_process_peak -
peak_reserved over the same rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from harness import PROJECT_ROOT
from harness.results import read_rows

SWEEPS = ("methods_gpu", "llama7b_bf16", "llama7b_int8", "default_gpu")
DEVICES = ("h100", "h200")
ROW_LIMIT = 0.05  # |error| <= 5 % of the measured peak on every row
MEDIAN_LIMIT = 0.01  # median |error| <= 1 %


def committed_rows(root: Path = PROJECT_ROOT / "results") -> list[tuple[str, dict]]:
    """(rows file relative to results/, row) of every ok GPU row of SWEEPS."""
    out = []
    for device in DEVICES:
        for sweep in SWEEPS:
            path = root / device / f"{sweep}.rows.jsonl"
            out += [(f"{device}/{path.name}", r) for r in read_rows(path) if r.get("status") == "ok"
                    and r.get("peak_allocated")]
    return out


def _config_key(config: dict) -> str:
    """What the estimate depends on: the model, the method and the batch's shape and dtype (not the steps, the data,
    the seed or the GPU: the trace runs two steps of fake tensors)."""
    train = config.get("train", {})
    return json.dumps([config.get("model"), config.get("method"),
                       [train.get(k) for k in ("batch_size", "seq_len", "dtype")]], sort_keys=True)


def spec_of(row: dict):
    """The row's job as a JobSpec: from its config (a config from older code: keys this code does not know are
    dropped, missing ones take today's defaults)."""
    from harness.schema import JobSpec

    config = json.loads(json.dumps(row["config"]))
    config["run"] = {**config.get("run", {}), "device": "cuda"}
    defaults = _defaults()
    for section, values in defaults.items():
        if isinstance(values, dict) and section not in ("model", "dataset", "method"):
            given = {k: v for k, v in (config.get(section) or {}).items() if k in values}
            config[section] = {**{k: v for k, v in values.items() if v != "???"}, **given}
    config = {k: v for k, v in config.items() if k in defaults}
    return JobSpec.from_dict(config)


_DEFAULTS: dict = {}


def _defaults() -> dict:
    if not _DEFAULTS:
        from harness.config import default_config

        _DEFAULTS.update(default_config())
    return _DEFAULTS


def estimates(rows: list[tuple[str, dict]], cache: Path | None = None, shard: tuple[int, int] = (0, 1),
              progress=None) -> dict[str, dict]:
    """config key -> {"peak", "phase"} or {"error"} for the rows' distinct configs (those of `shard` = (k, n): every
    n-th from the k-th, so n processes can share the work), kept in `cache` (JSON lines) when given, and read back
    from it: a key already there is not estimated again."""
    from harness.estimate import estimate

    done: dict[str, dict] = {}
    if cache and cache.exists():
        done = {entry["key"]: entry for entry in map(json.loads, cache.read_text().splitlines())}
    first = {}
    for _, row in rows:
        first.setdefault(_config_key(row["config"]), row)
    todo = [key for i, key in enumerate(sorted(first)) if i % shard[1] == shard[0] and key not in done]
    for i, key in enumerate(todo):
        try:
            est = estimate(spec_of(first[key]))
            entry = {"key": key, "peak": est.peak, "phase": max(est.phases, key=lambda p: est.phases[p]["peak"])}
        except Exception as e:  # reported in the row's line: a config this code cannot rebuild or trace
            entry = {"key": key, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
        done[key] = entry
        if cache:
            with open(cache, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if progress:
            progress(i + 1, len(todo), first[key], entry)
    return done


def check(rows: list[tuple[str, dict]], done: dict[str, dict]) -> list[dict]:
    """One line per row: where, model, method, batch, measured, estimated, error (estimate / measured - 1)."""
    lines = []
    for where, row in rows:
        entry = done.get(_config_key(row["config"]), {"error": "not estimated"})
        line = {"rows": where, "model": row["model"], "method": row["method"], "batch": row["batch_size"],
                "git_sha": (row.get("git_sha") or "")[:7], "measured": row["peak_allocated"]}
        if "error" in entry:
            line.update(estimate=None, error=None, note=entry["error"])
        else:
            line.update(estimate=entry["peak"], error=entry["peak"] / row["peak_allocated"] - 1, note="",
                        phase=entry["phase"])
        lines.append(line)
    return lines


def context_bytes(rows: list[tuple[str, dict]]) -> list[int]:
    return [r["nvml_process_peak"] - r["peak_reserved"] for _, r in rows
            if r.get("nvml_process_peak") and r.get("peak_reserved")]


def summary(lines: list[dict]) -> dict:
    errors = [abs(line["error"]) for line in lines if line["error"] is not None]
    worst = max((line for line in lines if line["error"] is not None), key=lambda x: abs(x["error"]), default=None)
    return {"rows": len(lines), "estimated": len(errors), "median_abs_error": statistics.median(errors) if errors
            else None, "worst": worst, "within_row_limit": sum(e <= ROW_LIMIT for e in errors),
            "not_estimated": [line for line in lines if line["error"] is None]}


def markdown(lines: list[dict], context: list[int]) -> str:
    s = summary(lines)
    worst = s["worst"]
    out = ["# The memory estimate against the committed GPU rows", "",
           "Generated by `python -m harness.estimate_check` (no GPU needed); the method is in docs/estimator.md.",
           f"Rows: every row that ended ok of {', '.join(SWEEPS)} under results/{{{','.join(DEVICES)}}}/. "
           "measured: the row's peak_allocated (torch.cuda.max_memory_allocated over the job's load and steps); "
           "estimate: harness.estimate's peak for the row's config; error: estimate / measured - 1.", "",
           f"- rows: {s['rows']}, estimated: {s['estimated']}, within ±{ROW_LIMIT:.0%}: {s['within_row_limit']}",
           f"- median |error|: {100 * s['median_abs_error']:.3f} % (limit {MEDIAN_LIMIT:.0%})"
           if s["median_abs_error"] is not None else "- median |error|: -"]
    if worst:
        out.append(f"- worst: {worst['rows']} {worst['model']} {worst['method']} batch {worst['batch']} at "
                   f"{worst['git_sha']}: {100 * worst['error']:+.2f} %")
    if context:
        out.append(f"- nvml_process_peak - peak_reserved over {len(context)} rows (the CUDA context): median "
                   f"{statistics.median(context) / 2**20:,.0f} MiB, range {min(context) / 2**20:,.0f}-"
                   f"{max(context) / 2**20:,.0f} MiB")
    out += ["", "| rows | model | method | batch | code | measured (MiB) | estimate (MiB) | error | peak phase | note |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        est = f"{line['estimate'] / 2**20:,.1f}" if line["estimate"] is not None else "-"
        err = f"{100 * line['error']:+.3f} %" if line["error"] is not None else "-"
        out.append(f"| {line['rows']} | {line['model']} | {line['method']} | {line['batch']} | {line['git_sha']} | "
                   f"{line['measured'] / 2**20:,.1f} | {est} | {err} | {line.get('phase', '-')} | {line['note']} |")
    return "\n".join(out) + "\n"


def row_errors(rows: list[dict]) -> str:
    """A report's estimate section (harness.aggregate): per row that carries estimate_peak, the estimate beside the
    measured peak (CUDA rows: estimate_peak vs peak_allocated; CPU rows: estimate_live_peak vs cpu_live_peak, the
    live-tensor figures, though a CPU job runs other kernels than the GPU job the trace follows), and the worst."""
    lines = []
    for r in rows:
        cuda = r.get("peak_allocated") is not None
        measured, est = ((r.get("peak_allocated"), r.get("estimate_peak")) if cuda
                         else (r.get("cpu_live_peak"), r.get("estimate_live_peak")))
        if r.get("estimate_peak") is None and not r.get("estimate_error"):
            continue
        error = est / measured - 1 if measured and est else None
        lines.append((r, "cuda allocated" if cuda else "live tensors (CPU)", measured, est, error))
    if not lines:
        return ""
    out = ["| model | method | batch | status | probe | measured (MiB) | estimate (MiB) | error |", "|---|---|---|---|---|---|---|---|"]
    for r, probe, measured, est, error in lines:
        out.append(f"| {r.get('model')} | {r.get('method')} | {r.get('batch_size')} | {r.get('status')} | {probe} | "
                   + (f"{measured / 2**20:,.1f}" if measured else "-") + " | "
                   + (f"{est / 2**20:,.1f}" if est else r.get("estimate_error") or "-") + " | "
                   + (f"{100 * error:+.2f} %" if error is not None else "-") + " |")
    errors = [x for x in lines if x[4] is not None]
    if errors:
        r, probe, _, _, error = max(errors, key=lambda x: abs(x[4]))
        out.append(f"\nworst: {r.get('model')} {r.get('method')} batch {r.get('batch_size')} ({probe}): "
                   f"{100 * error:+.2f} %; median |error| {100 * statistics.median(abs(x[4]) for x in errors):.2f} %")
    return "Memory estimate (harness/estimate.py, made before the job ran) against the measured peak.\n\n" + "\n".join(
        out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "estimate_check.md")
    parser.add_argument("--cache", type=Path, help="JSON lines of estimates already made (read, then appended to)")
    parser.add_argument("--shard", default="0/1", help="k/n: estimate every n-th distinct config from the k-th")
    args = parser.parse_args(argv)
    rows = committed_rows()

    def progress(done, total, row, entry):
        result = entry.get("error") or f"{100 * (entry['peak'] / row['peak_allocated'] - 1):+.3f} %"
        print(f"[{done}/{total}] {row['model']} {row['method']} batch {row['batch_size']}: {result}", file=sys.stderr)

    k, n = (int(x) for x in args.shard.split("/"))
    lines = check(rows, estimates(rows, args.cache, (k, n), progress))
    args.out.write_text(markdown(lines, context_bytes(rows)))
    s = summary(lines)
    print(f"{args.out}: {s['estimated']}/{s['rows']} rows estimated, {s['within_row_limit']} within "
          f"±{ROW_LIMIT:.0%}, median |error| {100 * (s['median_abs_error'] or 0):.3f} %")
    return 0 if s["estimated"] == s["rows"] and s["within_row_limit"] == s["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
