"""Entry point: `python -m harness.run [-m] key=value ...` — plan, run each job in its own process, summarize.

Examples:
  python -m harness.run method=adafactor model=llama_60m train.batch_size=16
  python -m harness.run -m method=adamw,sgd,adafactor 'method.transforms=[],[checkpointing]'
  python -m harness.run sweep=default_cpu            (a named sweep from conf/sweep/)
  python -m harness.run --cfg job -m method=adamw,sgd (print each job's composed config; nothing runs)
A job whose row already exists in the sweep's rows.jsonl is skipped (resume); run.retry_failed=true reruns the
jobs whose row is not `ok`, run.force=true reruns every job. Two sweeps cannot run in one sweep folder at once.
run.parallel=N runs up to N jobs of the sweep at once, each in its own process (for quality sweeps, whose numbers do
not depend on timing: their rows say timing_comparable: false); rows are still appended one at a time.

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack

from omegaconf import OmegaConf
from tqdm import tqdm

from harness import checkpoints
from harness.config import GROUPS, ConfigError, default_config, group_options, plan
from harness.data_checks import resolve_path
from harness.launch import Interrupted, interrupt_jobs, reset_interrupt, run_job, stop_servers
from harness.provenance import git_state
from harness.recipes import leaves
from harness.results import SweepRefused, append_row, describe, read_rows, sweep_lock, write_json_atomic
from harness.schema import RunSpec, TrainSpec, _describe


def _choices(key: str) -> str:
    """'  (one of ...)' for a train.* or run.* key whose type is a choice (harness.schema), else ''."""
    section, _, name = key.partition(".")
    spec = {"train": TrainSpec, "run": RunSpec}.get(section)
    hint = typing.get_type_hints(spec).get(name) if spec else None
    return f"  ({_describe(hint)})" if typing.get_origin(hint) in (typing.Literal, typing.Union, types.UnionType) else ""


def _usage() -> str:
    groups = "\n".join(f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS)
    keys = "\n".join(f"  {key}={value if isinstance(value, str) else json.dumps(value)}{_choices(key)}"
                     for key, value in leaves(default_config()))
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
    from harness import generate_report
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
    text += generate_report.console(rows)  # scenario=generate rows again, with their own columns
    return text + "\nstatus counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def run_sweep(jobs, progress: bool = True) -> list[dict]:
    """Run the jobs that have no row yet (or must rerun) and return every job's row. Raises SweepRefused before any
    job runs, OSError when a result cannot be written."""
    provenance = git_state()
    reset_interrupt()
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
        _adopt_rows(jobs, done)
        bar = stack.enter_context(tqdm(total=len(jobs), desc="sweep", unit="job", disable=not progress,
                                       dynamic_ncols=True))
        kept = _run_jobs(bar, jobs, done, provenance, rows)
    if kept:
        print(_kept_note(kept, provenance))
    return rows


def _adopt_rows(jobs, done: dict) -> None:
    """Rows of the run.resume_from files (made on another machine, committed) whose job is in this sweep and has no
    row yet: appended to the sweep's rows.jsonl, so that the sweep's folder holds every row, and counted as done."""
    files = {path for job in jobs for path in job.spec.run.resume_from or ()}
    found = {}
    for path in sorted(files):
        found.update((r["run_id"], r) for r in read_rows(resolve_path(path)) if r.get("status") != "interrupted")
    for job in jobs:
        row = found.get(job.run_id)
        if row is not None and job.run_id not in done and job.spec.run.resume_from:
            append_row(job.sweep_dir / "rows.jsonl", row)
            done[job.run_id] = row


def _rerun(job, previous: dict | None) -> bool:
    run = job.spec.run
    return previous is None or run.force or (run.retry_failed and previous.get("status") != "ok")


def _run_jobs(bar, jobs, done, provenance, rows) -> list[dict]:
    """Run the jobs that need it (up to run.parallel at once), appending each row as its job ends; `rows` gets every
    job's row in the jobs' order. The rows kept from earlier runs are returned."""
    slots: list[dict | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if _rerun(job, done.get(job.run_id)) or checkpoints.must_rerun(job, done.get(job.run_id)):
            todo.append(i)
        else:
            slots[i] = done[job.run_id]
            bar.update(1)
    kept = [slots[i] for i in range(len(jobs)) if slots[i] is not None]
    parallel = max((jobs[i].spec.run.parallel for i in todo), default=1)
    bases = {job.base_run_id for job in jobs}
    try:  # base jobs (harness/checkpoints.py) first: their rows decide whether their dependents run
        for phase in ([i for i in todo if jobs[i].run_id in bases], [i for i in todo if jobs[i].run_id not in bases]):
            by_run_id = {**done, **{job.run_id: row for job, row in zip(jobs, slots, strict=True) if row}}
            ready = []
            for i in phase:
                reason = checkpoints.blocked(jobs[i], by_run_id)
                if reason is None:
                    ready.append(i)
                else:
                    slots[i] = _record(bar, jobs[i], run_job(jobs[i], provenance, skip=reason))
            if parallel == 1:
                for i in ready:
                    bar.set_postfix_str(" ".join(jobs[i].overrides)[:60])
                    slots[i] = _record(bar, jobs[i], _launch(jobs[i], provenance))
            elif ready:
                _run_side_by_side(bar, jobs, ready, slots, provenance, parallel)
    finally:
        rows.extend(row for row in slots if row is not None)
    return kept


def _launch(job, provenance) -> dict:
    """The job's row; an interrupted job raises Interrupted after its row is written (the sweep stops)."""
    try:
        return run_job(job, provenance)
    except Interrupted as e:  # its row is kept like any other, then the sweep stops
        _write_row(job, e.row)
        raise
    except OSError:  # its folder could not be written: leave no empty one behind
        _remove_if_empty(job.job_dir)
        raise


def _write_row(job, row: dict) -> None:
    append_row(job.sweep_dir / "rows.jsonl", row)
    write_json_atomic(job.job_dir / "row.json", row)


def _record(bar, job, row: dict) -> dict:
    _write_row(job, row)
    bar.write(f"[{row['status']}] {' '.join(job.overrides) or 'defaults'} (repeat {job.repeat})"
              + (f": {row['error']}" if row.get("error") else ""))
    bar.update(1)
    return row


def _run_side_by_side(bar, jobs, todo, slots, provenance, parallel: int) -> None:
    """run.parallel > 1: a pool of threads each waits on one job process at a time; rows are written here, in this
    thread, as jobs end. Ctrl-C (or SIGTERM) kills the running jobs, whose rows then say `interrupted`."""
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="job") as pool:
        futures = {pool.submit(run_job, jobs[i], provenance): i for i in todo}
        bar.set_postfix_str(f"{min(parallel, len(todo))} at once")
        try:
            for future in as_completed(futures):
                slots[futures[future]] = _record(bar, jobs[futures[future]], future.result())
        except KeyboardInterrupt as stopped:
            interrupt_jobs()
            pool.shutdown(wait=True, cancel_futures=True)
            first = stopped if isinstance(stopped, Interrupted) else None
            for future, i in futures.items():
                if future.cancelled() or slots[i] is not None:
                    continue
                try:
                    slots[i] = _record(bar, jobs[i], future.result())
                except Interrupted as e:
                    slots[i] = e.row
                    _write_row(jobs[i], e.row)
                    first = first or e
            raise (first or stopped) from None
        except OSError:
            interrupt_jobs()
            raise


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


def _cluster_sweep(jobs) -> list[dict]:
    from harness import cluster  # submitit: the optional extra [slurm], checked at planning

    return cluster.run_sweep(jobs)


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
        rows = run_sweep(jobs) if jobs[0].spec.launcher.name == "local" else _cluster_sweep(jobs)
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
