"""Entry point: `python -m harness.run [-m] key=value ...` — plan, run each job in its own process, summarize.

Examples:
  python -m harness.run method=adafactor model=llama_60m train.batch_size=16
  python -m harness.run -m method=adamw,sgd,adafactor 'method.transforms=[],[checkpointing]'
  python -m harness.run sweep=default_cpu            (a named sweep from conf/sweep/)
  python -m harness.run --cfg job -m method=adamw,sgd (print each job's composed config; nothing runs)
A job whose row already exists in the sweep's rows.jsonl is skipped (resume); run.force=true reruns it.
"""
from __future__ import annotations

import json
import signal
import sys
from collections import Counter

from omegaconf import OmegaConf
from tqdm import tqdm

from harness.config import GROUPS, ConfigError, default_config, group_options, plan
from harness.launch import Interrupted, run_job, stop_servers
from harness.provenance import git_state
from harness.results import append_row, read_rows, write_json_atomic


def _leaves(node, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


def _usage() -> str:
    groups = "\n".join(f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS)
    keys = "\n".join(f"  {key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in _leaves(default_config()))
    return (f"{__doc__}\nConfig groups and their options:\n{groups}\n\nEvery key and its default (the group keys as "
            f"the default options give them; --cfg job shows a job's own):\n{keys}\n")


def _print_configs(argv: list[str]) -> int:
    """--cfg job: print the composed config of each job of the plan as YAML, as Hydra does; nothing runs."""
    at = argv.index("--cfg")
    if argv[at + 1:at + 2] != ["job"]:
        print("error: --cfg takes one value, job (the composed config of each job); "
              "e.g. python -m harness.run --cfg job method=sgd", file=sys.stderr)
        return 2
    try:
        jobs = plan(argv[:at] + argv[at + 2:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for job in jobs:
        if job.repeat == 0:  # the repeats of a job share its config
            print(f"# job: {' '.join(job.overrides) or 'defaults'} ({job.spec.run.repeats} repeat(s))")
            print(OmegaConf.to_yaml(job.config))
    return 0


def _fmt_bytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:,.1f} MiB" if value >= 2**20 or value == 0 else f"{value / 2**10:,.1f} KiB"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(rows: list[dict]) -> str:
    from harness.aggregate import settings_label, swept_keys

    swept = swept_keys(rows)  # the sweep's other axes get a column: its rows differ by more than model and method
    header = ["model", "method", *(["settings"] if swept else []), "rep", "status", "peak (probe)", "opt state",
              "activations", "step ms", "tok/s", "eval loss"]
    lines = [header]
    for r in rows:
        peak, probe = (r.get("peak_allocated"), "cuda") if r.get("peak_allocated") is not None else (
            r.get("cpu_live_peak"), "live")
        lines.append([str(r.get("model")), str(r.get("method")), *([settings_label(r, swept)] if swept else []),
                      str(r.get("repeat")), r.get("status", "?"),
                      f"{_fmt_bytes(peak)} ({probe})", _fmt_bytes(r.get("optimizer_state")),
                      _fmt_bytes(r.get("activations")), _fmt(r.get("step_ms"), ".1f"),
                      _fmt(r.get("tokens_per_s"), ",.0f"), _fmt(r.get("eval_loss"), ".4f")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    counts = Counter(r.get("status") for r in rows)
    return text + "\nstatus counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def run_sweep(jobs, progress: bool = True) -> list[dict]:
    provenance = git_state()
    rows = []
    # each sweep's existing rows, read once (a torn line is reported once, not once per job); an interrupted job
    # is run again
    done = {r["run_id"]: r for d in {job.sweep_dir for job in jobs} for r in read_rows(d / "rows.jsonl")
            if r.get("status") != "interrupted"}
    bar = tqdm(jobs, desc="sweep", unit="job", disable=not progress, dynamic_ncols=True)
    try:
        _run_jobs(bar, done, provenance, rows)
    finally:
        stop_servers()
    return rows


def _run_jobs(bar, done, provenance, rows) -> None:
    skipped_existing = 0
    for job in bar:
        rows_path = job.sweep_dir / "rows.jsonl"
        if job.run_id in done and not job.spec.run.force:
            skipped_existing += 1
            rows.append(done[job.run_id])
            continue
        bar.set_postfix_str(" ".join(job.overrides)[:60])
        interrupted = None
        try:
            row = run_job(job, provenance)
        except Interrupted as e:  # its row is kept like any other, then the sweep stops
            row, interrupted = e.row, e
        append_row(rows_path, row)
        write_json_atomic(job.job_dir / "row.json", row)
        rows.append(row)
        if interrupted is not None:
            raise interrupted
        bar.write(f"[{row['status']}] {' '.join(job.overrides) or 'defaults'} (repeat {job.repeat})"
                  + (f": {row['error']}" if row.get("error") else ""))
    if skipped_existing:
        print(f"{skipped_existing} job(s) already had a row and were not rerun (run.force=true reruns them)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(_usage())
        return 0
    if "--cfg" in argv:
        return _print_configs(argv)
    try:
        jobs = plan(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` or a time limit: like Ctrl-C, not silence
    try:
        rows = run_sweep(jobs)
    except KeyboardInterrupt as interrupted:
        detail = (f" ({interrupted.row['error']}; its row says `interrupted`)" if isinstance(interrupted, Interrupted)
                  else "")
        print(f"interrupted{detail}; the same command resumes the sweep", file=sys.stderr)
        return 130
    print(summary_table(rows))
    from harness.aggregate import write_report

    for sweep_dir in sorted({job.sweep_dir for job in jobs}):
        written = write_report(sweep_dir / "rows.jsonl", sweep_dir / "report")
        print(f"report: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
