"""train.batch_size=auto: the largest training batch that runs on the job's GPU, guessed by the estimate
(harness.estimate) and confirmed by real trials.

`search_around(fits, guess, limit)` is the search, apart from what a trial runs (any scenario can use it with its
own guess): it tries the guess, then gallops up (guess+1, +2, +4, ...) while trials fit, or down while they do not,
and bisects the bracket it finds, so it ends with the largest batch that fit and, where that is below the limit,
the next batch up that did not: two trials where the estimate is right.

A trial runs in a child process of its own (a fresh CUDA context, allocator and peak counters; an OOM there is data,
not a crash of the job): two training steps at the batch (the second with optimizer state), no eval. The job
process touches no CUDA before the search (the device's capacity is read through NVML), so every trial gets the
same memory the job will. The row gets `batch_search`: [[batch, status, peak_allocated], ...] in the order tried,
`batch_size_estimate` (the estimate's guess) and `batch_size` (the batch chosen, which the job then runs).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

BATCH_LIMIT = 4096
TRIAL_STEPS = 2


def search_around(fits: Callable[[int], bool], guess: int, limit: int = BATCH_LIMIT) -> tuple[int, list[int]]:
    """(largest batch in [1, limit] for which fits(batch), 0 if none; the batches tried, in order). Assumes fitting
    is monotone in the batch."""
    tried: dict[int, bool] = {}

    def fit(batch: int) -> bool:
        if batch not in tried:
            tried[batch] = fits(batch)
        return tried[batch]

    guess = min(max(guess, 1), limit)
    step = 1
    if fit(guess):
        good, bad = guess, limit + 1
        while good < limit:
            candidate = min(good + step, limit)
            if not fit(candidate):
                bad = candidate
                break
            good, step = candidate, step * 2
    else:
        good, bad = 0, guess
        while bad > 1:
            candidate = max(bad - step, 1)
            if fit(candidate):
                good = candidate
                break
            bad, step = candidate, step * 2
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fit(middle) else (good, middle)
    return good, list(tried)


def _trial(config: dict, batch: int) -> tuple[str, dict]:
    """In a child process: TRIAL_STEPS training steps at `batch`; (ok | oom | error, the run's record)."""
    import torch

    from harness.schema import JobSpec
    from harness.train import run_training
    from harness.worker import _resolve_device, one_line

    spec = JobSpec.from_dict(config)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, batch_size=batch))
    record: dict = {}
    try:
        run_training(spec, _resolve_device(spec.run.device), record)
        return "ok", record
    except torch.OutOfMemoryError as e:
        return "oom", {**record, "error": one_line(e)}
    except Exception as e:  # no OOM: the search stops with its reason
        return "error", {**record, "error": one_line(e)}


def _trial_config(spec) -> dict:
    """The job's config as JobSpec.from_dict reads it, cut to a trial: TRIAL_STEPS steps, no eval, no quality run."""
    data = _lists(dataclasses.asdict(spec))
    data["train"].update(batch_size=1, steps=TRIAL_STEPS, warmup_steps=1, eval_batches=0, lr_warmup_steps=0,
                         lr_warmup_fraction=None)
    data["quality"]["measure"] = False
    data["run"]["estimate"] = False  # the search has its estimate; a trial only runs
    return data


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def in_child(fn: Callable, *args) -> tuple[str, dict]:
    """fn(*args) -> (status, result) in a fresh interpreter, so that an OOM, a crash or a leaked allocation stays
    there; a child that dies is an `error`. spawn, not forkserver: importing transformers imports torchao, which
    initializes CUDA, so children forked from a server that preloaded the harness could not use CUDA (seen on the
    H100: "Cannot re-initialize CUDA in forked subprocess"); a fresh interpreter costs its imports, a few seconds."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as e:
            return "error", {"error": f"the child process died: {e}"}


def device_capacity(index: int = 0) -> int:
    """Total memory of the job's GPU through NVML (no CUDA context in this process)."""
    import pynvml

    from harness.nvml import visible_handle

    pynvml.nvmlInit()
    return int(pynvml.nvmlDeviceGetMemoryInfo(visible_handle(pynvml, index)).total)


def resolve(spec, record: dict, device: str = "cuda", capacity: int | None = None):
    """The job `spec` with train.batch_size=auto replaced by the largest batch whose trial runs; `record` gets the
    search. A batch whose trial is not ok, or whose trial's allocated peak exceeds train.memory_budget_gib where
    given, does not fit."""
    from harness.estimate import batch_within, estimate

    budget = int(spec.train.memory_budget_gib * 2**30) if spec.train.memory_budget_gib else None
    on_gpu = device == "cuda"
    if budget is None and not on_gpu:
        raise RuntimeError("train.batch_size=auto on the CPU needs train.memory_budget_gib (no OOM to find there)")
    peak_key = "peak_allocated" if on_gpu else "cpu_live_peak"
    one = dataclasses.replace(spec, train=dataclasses.replace(spec.train, batch_size=1))
    e1, e8 = (estimate(one, b, "cuda" if on_gpu else "cpu") for b in (1, 8))
    # the guess: every phase's NVML figure within the device's memory, or its allocated peak within the budget
    guess = max(1, batch_within(e1, e8, capacity or device_capacity()) if budget is None
                else batch_within(e1, e8, budget, overhead=0))
    config = _trial_config(spec)
    trials: dict[int, tuple[str, dict]] = {}

    def fits(batch: int) -> bool:
        status, result = trials[batch] = in_child(_trial, config, batch)
        print(f"batch_size=auto: batch {batch}: {status} {peak_key} {result.get(peak_key)}", flush=True)
        if status == "error":
            raise RuntimeError(f"train.batch_size=auto: the trial at batch {batch} failed: {result['error']}")
        return status == "ok" and (budget is None or result.get(peak_key, budget + 1) <= budget)

    best, order = search_around(fits, guess)
    record.update(batch_size_estimate=guess, batch_search_probe=peak_key, batch_size=best or None,
                  batch_search=[[b, trials[b][0], trials[b][1].get(peak_key)] for b in order])
    if best == 0:
        raise RuntimeError(f"train.batch_size=auto: batch 1 does not fit ({trials[1][0]})")
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, batch_size=best))
