"""Entry point: `python -m harness.run [-m] key=value ...` — plan, run each job in its own process, summarize.

Examples:
  python -m harness.run method=adafactor model=llama_60m train.batch_size=16
  python -m harness.run -m method=adamw,sgd,adafactor 'method.transforms=[],[checkpointing]'
  python -m harness.run sweep=default_cpu            (a named sweep from conf/sweep/)
  python -m harness.run --cfg job -m method=adamw,sgd (print each job's composed config; nothing runs)
A job whose row already exists in the sweep's rows.jsonl is skipped (resume); run.retry_failed=true reruns the
jobs whose row is not `ok`, run.force=true reruns every job. Two sweeps cannot run in one sweep folder at once.

Exit codes: 0 every job ended ok; 1 some job did not (error, oom, timeout, diverged or skipped: the last line names
them); 2 nothing ran: bad input, a sweep folder that cannot be created, or one another sweep is running in;
3 results could not be written (a full disk, a read-only folder): the rows already written are kept; 130 interrupted.
"""
from __future__ import annotations

import json
import signal
import sys
import types
import typing
from collections import Counter
from contextlib import ExitStack

from omegaconf import OmegaConf
from tqdm import tqdm

from harness.config import GROUPS, ConfigError, default_config, group_options, plan
from harness.launch import Interrupted, run_job, stop_servers
from harness.provenance import git_state
from harness.results import SweepRefused, append_row, describe, read_rows, sweep_lock, write_json_atomic
from harness.schema import RunSpec, TrainSpec, _describe


def _leaves(node, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


def _choices(key: str) -> str:
    """'  (one of ...)' for a train.* or run.* key whose type is a choice (harness.schema), else ''."""
    section, _, name = key.partition(".")
    spec = {"train": TrainSpec, "run": RunSpec}.get(section)
    hint = typing.get_type_hints(spec).get(name) if spec else None
    return f"  ({_describe(hint)})" if typing.get_origin(hint) in (typing.Literal, typing.Union, types.UnionType) else ""


def _usage() -> str:
    groups = "\n".join(f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS)
    keys = "\n".join(f"  {key}={value if isinstance(value, str) else json.dumps(value)}{_choices(key)}"
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
            if job.recipe:
                print(f"# recipe of method {job.spec.method.name} for {job.spec.model.name}: {', '.join(job.recipe)}")
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
    quality = any(r.get("quality_measured") for r in rows)  # else a memory sweep: its loss claims no quality
    header = ["model", "method", *(["settings"] if swept else []), "rep", "status", "peak (probe)", "opt state",
              "activations", "step ms", "tok/s", "eval loss" if quality else "loss (not quality)",
              *(["verdict (job)"] if quality else [])]
    lines = [header]
    for r in rows:
        peak, probe = (r.get("peak_allocated"), "cuda") if r.get("peak_allocated") is not None else (
            r.get("cpu_live_peak"), "live")
        lines.append([str(r.get("model")), str(r.get("method")), *([settings_label(r, swept)] if swept else []),
                      str(r.get("repeat")), r.get("status", "?"),
                      f"{_fmt_bytes(peak)} ({probe})", _fmt_bytes(r.get("optimizer_state")),
                      _fmt_bytes(r.get("activations")), _fmt(r.get("step_ms"), ".1f"),
                      _fmt(r.get("tokens_per_s"), ",.0f"), _fmt(r.get("eval_loss"), ".4f"),
                      *([str(r.get("verdict") or "-")] if quality else [])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    counts = Counter(r.get("status") for r in rows)
    return text + "\nstatus counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def run_sweep(jobs, progress: bool = True) -> list[dict]:
    """Run the jobs that have no row yet (or must rerun) and return every job's row. Raises SweepRefused before any
    job runs, OSError when a result cannot be written."""
    provenance = git_state()
    rows = []
    with ExitStack() as stack:
        sweep_dirs = sorted({job.sweep_dir for job in jobs})
        for sweep_dir in sweep_dirs:
            stack.enter_context(sweep_lock(sweep_dir))
        stack.callback(stop_servers)
        # each sweep's existing rows, read once (a torn line is reported once, not once per job); the latest row of a
        # job counts, and an interrupted job is run again
        done = {r["run_id"]: r for d in sweep_dirs for r in read_rows(d / "rows.jsonl")}
        done = {run_id: r for run_id, r in done.items() if r.get("status") != "interrupted"}
        bar = stack.enter_context(tqdm(jobs, desc="sweep", unit="job", disable=not progress, dynamic_ncols=True))
        kept = _run_jobs(bar, done, provenance, rows)
    if kept:
        print(_kept_note(kept, provenance))
    return rows


def _rerun(job, previous: dict | None) -> bool:
    run = job.spec.run
    return previous is None or run.force or (run.retry_failed and previous.get("status") != "ok")


def _run_jobs(bar, done, provenance, rows) -> list[dict]:
    """Run each job in turn, appending its row; the rows kept from earlier runs are returned."""
    kept = []
    for job in bar:
        if not _rerun(job, done.get(job.run_id)):
            kept.append(done[job.run_id])
            rows.append(done[job.run_id])
            continue
        bar.set_postfix_str(" ".join(job.overrides)[:60])
        interrupted = None
        try:
            row = run_job(job, provenance)
        except Interrupted as e:  # its row is kept like any other, then the sweep stops
            row, interrupted = e.row, e
        except OSError:  # its folder could not be written: leave no empty one behind
            _remove_if_empty(job.job_dir)
            raise
        append_row(job.sweep_dir / "rows.jsonl", row)
        write_json_atomic(job.job_dir / "row.json", row)
        rows.append(row)
        if interrupted is not None:
            raise interrupted
        bar.write(f"[{row['status']}] {' '.join(job.overrides) or 'defaults'} (repeat {job.repeat})"
                  + (f": {row['error']}" if row.get("error") else ""))
    return kept


def _remove_if_empty(folder) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone: nothing to tidy
        pass


def _labels(jobs) -> list[str]:
    """Each job's overrides that set it apart from the sweep's other jobs, and its repeat where there are several
    (empty for a sweep of one job)."""
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if jobs else set()
    repeats = any(job.repeat for job in jobs)
    return [" ".join([o for o in job.overrides if o not in shared] + ([f"(repeat {job.repeat})"] if repeats else []))
            for job in jobs]


def _code_of(row: dict) -> str:
    return f"{(row.get('git_sha') or 'unknown')[:10]}{' (dirty)' if row.get('git_dirty') else ''}"


def _kept_note(kept: list[dict], provenance: dict) -> str:
    """How many jobs were not rerun, and which code made the kept rows where it is not the current code."""
    note = (f"{len(kept)} job(s) already had a row and were not rerun "
            "(run.retry_failed=true reruns those not ok, run.force=true reruns all)")
    current = _code_of(provenance)
    other = Counter(_code_of(r) for r in kept if _code_of(r) != current)
    if other:
        made_by = ", ".join(f"{count} by {code}" for code, count in other.most_common())
        note += (f"\nnote: {sum(other.values())} of the {len(kept)} kept rows were made by other code than the "
                 f"current {current}: {made_by}")
    return note


def _not_ok_line(jobs, rows: list[dict], shown: int = 10) -> str:
    """Which jobs did not end ok (skipped ones included: they measured nothing); `rows` are the jobs' rows, in order."""
    bad = [(label, r["status"]) for label, r in zip(_labels(jobs), rows, strict=True) if r.get("status") != "ok"]
    listed = "; ".join(f"{label or 'the job'} [{status}]" for label, status in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    skipped = "; a skipped job measured nothing, so it counts" if any(s == "skipped" for _, s in bad) else ""
    return (f"{len(bad)} of {len(rows)} jobs did not end ok (exit code 1{skipped}): {listed}{more}; "
            "run.retry_failed=true reruns them")


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
        print(summary_table(rows))
        from harness.aggregate import write_report

        for sweep_dir in sorted({job.sweep_dir for job in jobs}):
            written = write_report(sweep_dir / "rows.jsonl", sweep_dir / "report")
            print(f"report: {', '.join(str(p) for p in written)}")
    except SweepRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: the sweep stopped, its results could not be written: {describe(e)}; the rows already in "
              f"rows.jsonl are kept, and the same command resumes", file=sys.stderr)
        return 3
    except KeyboardInterrupt as interrupted:
        detail = (f" ({interrupted.row['error']}; its row says `interrupted`)" if isinstance(interrupted, Interrupted)
                  else "")
        print(f"interrupted{detail}; the same command resumes the sweep", file=sys.stderr)
        return 130
    if any(r.get("status") != "ok" for r in rows):
        print(_not_ok_line(jobs, rows), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
