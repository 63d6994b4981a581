"""Did a run learn? Pure functions on loss curves; no torch, no files.

A memory run (quality.measure false) gets `training_verdict`: whether its training loss fell, a check of the run
that measured the memory, never a quality number. A quality run gets the verdict below.

A verdict is one of VERDICTS with a one-line reason. Two stages:
- `job_verdict`: what one job knows alone (its held-out eval curve and its training curve): diverged, overfit,
  not_learning when the eval loss did not fall at all, else learned (provisional).
- `sweep_verdicts`: what the sweep knows: a learned run whose improvement is small next to the full-rank baseline's
  (method `adamw`, same model, dataset and token budget) is not_learning.

Improvement = initial eval loss (before the first step) - final eval loss, in nats/token, on the same held-out tokens.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

VERDICTS = ("learned", "diverged", "not_learning", "overfit")
BASELINE_METHOD = "adamw"  # the full-rank baseline every quality sweep is judged against

# a change of the eval loss this small (nats/token) is no movement: eval losses of one model on the same held-out
# tokens differ by about this much between kernels and batch sizes alone
FLAT = 0.01
# overfit: the final eval loss gave back more than this fraction of the best improvement (initial - min eval)
OVERFIT_GIVEBACK = 0.05
# train losses averaged at each end of the span compared for "train keeps falling" (per-step losses are noisy)
TRAIN_WINDOW = 5
# not_learning: improvement within NOISE_SIGMAS x the std (over seeds) of the baseline's final eval loss of zero;
# a memory run's train loss moved by less than NOISE_SIGMAS standard errors of its batch-to-batch noise
NOISE_SIGMAS = 2.0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_bad(curve: Sequence) -> int | None:
    """Step of the first non-finite loss of a [[step, loss], ...] curve (rows store nan and inf as null)."""
    return next((step for step, loss in curve if not _finite(loss)), None)


def _train_falls(train_curve: Sequence, after: float) -> bool | None:
    """Whether the training loss kept falling after step `after`: the mean of the last TRAIN_WINDOW train losses at
    or before `after` is above the mean of the last TRAIN_WINDOW of the run. None where the curve has too few points
    on either side to tell."""
    before = [loss for step, loss in train_curve if step <= after][-TRAIN_WINDOW:]
    later = [loss for step, loss in train_curve if step > after][-TRAIN_WINDOW:]
    if not before or not later:
        return None
    return statistics.fmean(later) < statistics.fmean(before)


def job_verdict(initial_eval_loss, eval_curve: Sequence, train_curve: Sequence, final_eval_loss) -> tuple[str, str]:
    """(verdict, reason) from one job's curves; curves are [[step, loss], ...], eval_curve includes the final eval.

    Rules, first match wins:
    - diverged: a loss that is not finite (nan, inf, or null in a row) anywhere: initial, final, either curve;
      or the final eval loss above the initial one by more than FLAT (the run made the model worse than its
      initialization).
    - not_learning: the final eval loss within FLAT of the initial one (it did not move).
    - overfit: the eval curve's minimum m (at step s) is below the final eval loss by more than
      max(OVERFIT_GIVEBACK x (initial - m), FLAT) nats, while the training loss kept falling after s
      (mean of the last TRAIN_WINDOW train losses up to s > mean of the run's last TRAIN_WINDOW).
      Needs eval points between start and end (quality.eval_every > 0).
    - learned: the eval loss fell; provisional until `sweep_verdicts` compares it with the full-rank baseline.
    """
    bad_eval, bad_train = _first_bad(eval_curve), _first_bad(train_curve)
    if not _finite(initial_eval_loss):
        return "diverged", f"initial eval loss is {initial_eval_loss} (not finite)"
    if bad_train is not None:
        return "diverged", f"train loss not finite at step {bad_train}"
    if bad_eval is not None:
        return "diverged", f"eval loss not finite at step {bad_eval}"
    if not _finite(final_eval_loss):
        return "diverged", f"final eval loss is {final_eval_loss} (not finite)"
    if final_eval_loss > initial_eval_loss + FLAT:
        return "diverged", f"final eval loss {final_eval_loss:.4g} is above the initial {initial_eval_loss:.4g}"
    if final_eval_loss > initial_eval_loss - FLAT:
        return "not_learning", (f"eval loss moved by less than {FLAT:g} nats ({initial_eval_loss:.4g} -> "
                                f"{final_eval_loss:.4g})")
    if eval_curve:
        min_step, min_loss = min(eval_curve, key=lambda point: point[1])
        rise = final_eval_loss - min_loss
        allowed = max(OVERFIT_GIVEBACK * (initial_eval_loss - min_loss), FLAT)
        if rise > allowed and _train_falls(train_curve, min_step):
            return "overfit", (f"eval loss rose from {min_loss:.4g} at step {min_step} to {final_eval_loss:.4g} "
                               f"(> {allowed:.3g}) while the train loss kept falling")
    return "learned", f"eval loss fell from {initial_eval_loss:.4g} to {final_eval_loss:.4g}"


def _step_noise(losses: Sequence[float]) -> float | None:
    """Batch-to-batch noise (a std, nats/token) of a training curve: the sample variance of successive differences,
    halved (a steady trend only shifts their mean, so it does not count as noise). None with fewer than 3 points."""
    if len(losses) < 3:
        return None
    return math.sqrt(statistics.variance(b - a for a, b in zip(losses, losses[1:], strict=False)) / 2)


def training_verdict(train_curve: Sequence) -> tuple[str, str]:
    """(verdict, reason) of a memory run (quality.measure false) from its training curve alone: a health check of the
    run that measured the memory, not a quality number. The mean of the first TRAIN_WINDOW logged train losses is
    compared with the mean of the last TRAIN_WINDOW (windows shrink to half the curve on short runs); a move counts
    only beyond max(FLAT, NOISE_SIGMAS x its standard error), the standard error from the curve's batch-to-batch
    noise s (_step_noise) as s x sqrt(2 / window). Each step reads another batch, so a run whose weights barely move
    (a few finetuning steps at a finetuning lr) sees only the batches' spread, which alone can put the last window
    above the first. diverged: a loss not finite, or a rise beyond the margin; learned: a fall beyond it; else
    not_learning."""
    bad = _first_bad(train_curve)
    if bad is not None:
        return "diverged", f"memory run: train loss not finite at step {bad}"
    if len(train_curve) < 2:
        return "not_learning", "memory run: too few training steps to tell"
    losses = [loss for _, loss in train_curve]
    window = min(TRAIN_WINDOW, len(losses) // 2)
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    noise = _step_noise(losses)
    margin = FLAT if noise is None else max(FLAT, NOISE_SIGMAS * noise * math.sqrt(2 / window))
    moved = (f"memory run (not a quality measurement): mean train loss of the first {window} logged steps "
             f"{first:.4g}, of the last {window} {last:.4g}, margin {margin:.2g}"
             + ("" if noise is None else f" ({NOISE_SIGMAS:g} x the standard error of a mean of {window} steps)"))
    if last > first + margin:
        return "diverged", moved
    if last > first - margin:
        return "not_learning", moved
    return "learned", moved


def _budget_key(row: dict) -> tuple:
    return row.get("model"), row.get("dataset"), row.get("tokenizer"), row.get("scenario"), row.get("budget_tokens")


def improvement(row: dict) -> float | None:
    """Initial - final eval loss of a row, None where either is missing or not finite."""
    start, end = row.get("initial_eval_loss"), row.get("eval_loss")
    return start - end if _finite(start) and _finite(end) else None


def sweep_verdicts(rows: Iterable[dict]) -> list[tuple[str | None, str | None]]:
    """Final (verdict, reason) per row, in order; a memory row keeps its own training_verdict (None in older rows).

    Each row carries its job's verdict (`verdict`, `verdict_reason`; a row of status diverged is diverged) and its
    sweep's `not_learning_fraction` f. A learned row becomes not_learning when, against the baseline B = the rows of
    method adamw with the same model, dataset, tokenizer, scenario and budget_tokens that learned (mean over their
    seeds):
    - improvement < f x mean improvement of B, or
    - improvement < NOISE_SIGMAS x std of B's final eval loss over seeds (sample std; needs >= 2 seeds): a gain
      the seed-to-seed spread of the baseline alone could give.
    Without a baseline that learned, a learned row stays learned and its reason says it was not compared.
    """
    rows = list(rows)
    baselines: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("method") == BASELINE_METHOD and _job_verdict_of(row)[0] == "learned":
            baselines.setdefault(_budget_key(row), []).append(row)
    return [_final(row, baselines.get(_budget_key(row), [])) for row in rows]


def _job_verdict_of(row: dict) -> tuple[str | None, str | None]:
    if not row.get("quality_measured"):  # a memory run's health check (training_verdict), or none in older rows
        return (row.get("verdict"), row.get("verdict_reason")) if row.get("status") == "ok" else (None, None)
    if row.get("status") == "diverged":
        own = row.get("verdict_reason") if row.get("verdict") == "diverged" else None
        return "diverged", own or row.get("error") or "training loss not finite"
    if row.get("status") != "ok":
        return None, None  # error, oom, timeout, ...: the status says what happened; no loss to judge
    if row.get("verdict") in VERDICTS:
        return row["verdict"], row.get("verdict_reason") or ""
    return job_verdict(row.get("initial_eval_loss"), row.get("eval_curve") or [], row.get("train_curve") or [],
                       row.get("eval_loss"))


def _final(row: dict, baseline: list[dict]) -> tuple[str | None, str | None]:
    verdict, reason = _job_verdict_of(row)
    if verdict != "learned" or not row.get("quality_measured"):
        return verdict, reason
    if not baseline:
        return verdict, f"{reason} (no full-rank {BASELINE_METHOD} run that learned at this budget to compare with)"
    gain = improvement(row)
    base_gain = statistics.fmean(improvement(b) for b in baseline)
    fraction = row["not_learning_fraction"]
    if gain < fraction * base_gain:
        return "not_learning", (f"improvement {gain:.3g} is below {fraction:g} x the {BASELINE_METHOD} baseline's "
                                f"{base_gain:.3g}")
    if len(baseline) >= 2:
        noise = NOISE_SIGMAS * statistics.stdev(b["eval_loss"] for b in baseline)
        if gain < noise:
            return "not_learning", (f"improvement {gain:.3g} is within noise of zero (< {NOISE_SIGMAS:g} x the "
                                    f"{BASELINE_METHOD} baseline's std over {len(baseline)} seeds = {noise:.3g})")
    return verdict, f"{reason}; {gain / base_gain:.0%} of the {BASELINE_METHOD} baseline's improvement"


# fidelity of a KV-cache or weight method against the full cache (scenario=generate, harness/fidelity.py)
FIDELITY_COLLAPSED_PPL = 2.0  # perplexity through the cache above this multiple of the full cache's: collapsed
FIDELITY_DEGRADED_PPL = 1.05  # above this multiple (or top-1 agreement below FIDELITY_DEGRADED_TOP1): degraded
FIDELITY_DEGRADED_TOP1 = 0.9


def fidelity_verdict(row: dict) -> tuple[str | None, str | None]:
    """(faithful | degraded | collapsed, reason) of a generate row that measured fidelity; (None, None) otherwise.
    collapsed: perplexity through the cache more than FIDELITY_COLLAPSED_PPL x the full cache's on the same tokens
    (or not finite): no trade-off, whatever it saves. degraded: above FIDELITY_DEGRADED_PPL x, or top-1 agreement
    below FIDELITY_DEGRADED_TOP1. faithful: neither."""
    ppl, full, top1 = row.get("fidelity_ppl"), row.get("fidelity_ppl_full"), row.get("fidelity_top1")
    if row.get("status") != "ok" or not _finite(full) or top1 is None or (isinstance(top1, float) and top1 != top1):
        return None, None
    if not _finite(ppl) or ppl > FIDELITY_COLLAPSED_PPL * full:
        return "collapsed", f"perplexity {ppl:.4g} through the cache against {full:.4g} with the full cache"
    ratio = ppl / full
    if ratio > FIDELITY_DEGRADED_PPL or top1 < FIDELITY_DEGRADED_TOP1:
        return "degraded", f"perplexity x{ratio:.3f} of the full cache's, top-1 agreement {top1:.3f}"
    return "faithful", f"perplexity x{ratio:.3f} of the full cache's, top-1 agreement {top1:.3f}"
