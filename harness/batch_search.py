"""batch_size=auto: the largest batch whose run stays within a memory budget, found by running it.

Each candidate batch runs in a child process of its own (a fresh CUDA context, allocator and peak counters; a CUDA
OOM there is data, not a crash of the job), forked from a multiprocessing fork server that has imported the
harness once and never touches CUDA. `largest_fitting` is the search, separate from what a probe runs, so any
scenario can use it: after batch 1, two probes (the prefill chunk's size and twice that) give a line,
peak(b) ≈ a + b·per_sequence, whose prediction is the guess of harness.autobatch.search_around (shared with
train.batch_size=auto, whose guess comes from the estimator): the guess, then up or down by 1, 2, 4, ... and
bisection. A probe fits when it ends ok with its peak within the budget.

The generate job's row is the run at the largest batch found (harness.infer.measure, fidelity off), with
`batch_search`: [[batch, status, peak bytes], ...] in the order probed, and `memory_budget`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from harness.autobatch import in_child, search_around

GIB = 2**30
BATCH1_FIELDS = ("peak_allocated", "cpu_live_peak", "kv_cache_bytes", "ttft_s", "prefill_tokens_per_s", "decode_ms",
                 "decode_ms_p20", "decode_ms_p80", "decode_tokens_per_s")


def largest_fitting(probe: Callable[[int], tuple[bool, int | None]], limit: int, budget: int,
                    start: int = 2, per_item: Callable[[int], int] = lambda batch: 0) -> tuple[int, list]:
    """(largest batch in [1, limit] for which probe(batch) = (fits, peak bytes) fits, 0 if none; the batches probed
    in order). Batch 1 first, then `start` and 2·start, whose peaks give the line peak(b) ≈ a + b·c; its prediction
    for `budget` (bytes) is the guess harness.autobatch.search_around starts from (the guess, then g + 1 where it is
    right). `start` should be where the line is straight (past a prefill chunk's size, whose activations grow with
    the batch below it); per_item(batch), bytes each item surely adds (a sequence's KV cache), floors the slope."""
    seen: dict[int, tuple[bool, int | None]] = {}

    def fits(batch: int) -> bool:
        if batch not in seen:
            seen[batch] = probe(batch)
        return seen[batch][0]

    if not fits(1):
        return 0, list(seen)
    a, b = min(max(start, 2), limit), min(2 * max(start, 2), limit)
    if not fits(a):
        guess = a - 1
    elif not fits(b):
        guess = (a + b) // 2
    else:
        (_, pa), (_, pb) = seen[a], seen[b]
        slope = max((pb - pa) / (b - a) if pa is not None and pb is not None and b > a else 0, per_item(b))
        guess = b + int((budget - pb) // slope) if slope > 0 and pb is not None else 2 * b
    best, _ = search_around(fits, min(max(guess, 1), limit), limit)
    return best, list(seen)


def _probe(config: dict, batch: int) -> tuple[str, dict]:
    """In a child process: one generate run at `batch` (fidelity off); (status, record)."""
    from harness.infer import measure
    from harness.probes import NvmlSampler
    from harness.schema import JobSpec
    from harness.worker import _resolve_device, one_line

    spec = JobSpec.from_dict(config)
    device = _resolve_device(spec.run.device)
    record: dict = {}
    nvml = NvmlSampler(device.index or 0, spec.run.nvml_interval_ms / 1000).start() if device.type == "cuda" else None
    try:
        measure(spec, device, record, batch, fidelity=False, nvml=nvml)
        return "ok", record
    except torch.OutOfMemoryError as e:
        return "oom", {**record, "error": one_line(e)}
    except Exception as e:  # a failure that is no OOM ends the search with its reason
        return "error", {**record, "error": one_line(e)}
    finally:
        if nvml is not None:
            record.update(nvml.stop())


def search(spec, device: torch.device, record: dict) -> None:
    """Fill `record` with the run at the largest batch within spec.infer.memory_budget_gib (module docstring)."""
    budget = int(spec.infer.memory_budget_gib * GIB)
    config = _plain(spec)
    peak_key = "peak_allocated" if device.type == "cuda" else "cpu_live_peak"
    records: dict[int, tuple[str, dict]] = {}
    def probe(batch: int) -> tuple[bool, int | None]:
        status, result = records[batch] = in_child(_probe, config, batch)
        print(f"batch {batch}: {status} peak {result.get(peak_key)}", flush=True)
        if status == "error":
            raise RuntimeError(f"batch_size=auto: batch {batch}: {result['error']}")
        return status == "ok" and result.get(peak_key, budget + 1) <= budget, result.get(peak_key)

    best, order = largest_fitting(probe, spec.infer.batch_limit, budget, start=spec.infer.prefill_batch or 2,
                                  per_item=lambda b: records[b][1].get("kv_cache_bytes", 0) // b)
    record.update(memory_budget=budget, batch_size_auto=True, batch_search_probe=peak_key,
                  batch_search=[[b, records[b][0] if records[b][0] != "ok" or records[b][1].get(peak_key, budget + 1)
                                 <= budget else "over_budget", records[b][1].get(peak_key)] for b in order])
    first = records[1][1]  # the batch-1 run, a row's worth of figures beside the largest batch's
    record.update({f"batch1_{k}": first.get(k) for k in BATCH1_FIELDS})
    if best == 0:
        status, result = records[1]
        record.update(status="oom", error=f"batch 1 does not fit infer.memory_budget_gib="
                      f"{spec.infer.memory_budget_gib:g} ({peak_key} {result.get(peak_key)} B; {status})")
        return
    record.update(records[best][1])


def _plain(spec) -> dict:
    """The job's config as the plain dict JobSpec.from_dict reads, with batch_size and fidelity fixed per probe."""
    data = dataclasses.asdict(spec)
    data["infer"] = {**data["infer"], "batch_size": 1, "fidelity": False}
    return _lists(data)


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value
