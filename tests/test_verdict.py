"""Each verdict on constructed loss curves (harness/verdict.py): one job alone, then against the sweep's baseline."""
import math

import pytest

from harness.verdict import FLAT, NOISE_SIGMAS, job_verdict, sweep_verdicts, training_verdict


def _decay(start, end, steps, every=1, rate=0.05):
    """[[step, loss]] falling from `start` towards `end` exponentially."""
    return [[s, end + (start - end) * math.exp(-rate * s)] for s in range(0, steps + 1, every)]


def test_a_falling_eval_curve_learned():
    evals, train = _decay(10.4, 4.0, 200, every=50), _decay(10.4, 3.8, 200)
    verdict, reason = job_verdict(10.4, evals, train, evals[-1][1])
    assert verdict == "learned" and reason == "eval loss fell from 10.4 to 4"


@pytest.mark.parametrize("where", ["train", "eval", "initial", "final"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_loss_that_is_not_finite_anywhere_is_diverged(where, bad):
    """nan and inf in a job, null in a row (rows store non-finite floats as null)."""
    evals, train = _decay(10.4, 4.0, 200, every=50), _decay(10.4, 3.8, 200)
    initial, final = 10.4, evals[-1][1]
    if where == "train":
        train[120][1] = bad
    elif where == "eval":
        evals[2][1] = bad
    elif where == "initial":
        initial = bad
    else:
        final = bad
    verdict, reason = job_verdict(initial, evals, train, final)
    assert verdict == "diverged" and "not finite" in reason
    if where == "train":
        assert "step 120" in reason
    if where == "eval":
        assert "step 100" in reason


def test_a_final_eval_above_the_start_is_diverged():
    """The issue's LLaMA-1b GaLore rows: 30 steps at lr 1e-2 end far above where they started."""
    evals = [[0, 10.4], [15, 18.0], [30, 27.5]]
    train = [[s, 10.4 + 0.6 * s] for s in range(31)]
    verdict, reason = job_verdict(10.4, evals, train, 27.5)
    assert verdict == "diverged" and reason == "final eval loss 27.5 is above the initial 10.4"


def test_an_eval_loss_that_does_not_move_is_not_learning_and_a_small_rise_is_no_divergence():
    """MeZO at a short budget: the eval loss stays where it started, within FLAT, either way."""
    for final in (10.4 + FLAT / 2, 10.4, 10.4 - FLAT / 2):
        verdict, reason = job_verdict(10.4, [[0, 10.4], [30, final]], [[s, 10.4] for s in range(31)], final)
        assert verdict == "not_learning" and reason.startswith(f"eval loss moved by less than {FLAT:g} nats")
    assert job_verdict(10.4, [], [], 10.4 + 2 * FLAT)[0] == "diverged"


def test_eval_rising_while_train_falls_is_overfit():
    """Several epochs over a small corpus: held-out loss bottoms out at step 400, training loss goes on falling."""
    evals = [[0, 10.4], [200, 5.0], [400, 4.5], [600, 4.9], [800, 5.6]]
    train = _decay(10.4, 1.0, 800, rate=0.005)
    verdict, reason = job_verdict(10.4, evals, train, 5.6)
    assert verdict == "overfit"
    assert reason.startswith("eval loss rose from 4.5 at step 400 to 5.6") and "train loss kept falling" in reason


def test_eval_rising_with_train_rising_too_is_no_overfit():
    """An instability late in the run (both losses go up) is not the overfit pattern; the run still ends far below
    its start, so it learned, and its final loss says how well."""
    evals = [[0, 10.4], [400, 4.5], [800, 5.6]]
    train = [[s, 10.4 - 0.015 * s] for s in range(401)] + [[s, 4.4 + 0.003 * (s - 400)] for s in range(401, 801)]
    assert job_verdict(10.4, evals, train, 5.6)[0] == "learned"


def test_a_small_bump_after_the_minimum_is_no_overfit():
    """A rise of less than OVERFIT_GIVEBACK of the improvement (here 0.1 of 5.9 nats) is noise of the curve."""
    evals = [[0, 10.4], [400, 4.5], [800, 4.6]]
    train = _decay(10.4, 1.0, 800, rate=0.005)
    assert job_verdict(10.4, evals, train, 4.6)[0] == "learned"


def test_overfit_needs_eval_points_between_start_and_end():
    """With quality.eval_every=0 the curve is start and end only: a minimum at the start is the initial loss,
    and a final loss below it learned."""
    assert job_verdict(10.4, [[0, 10.4], [800, 6.0]], _decay(10.4, 1.0, 800), 6.0)[0] == "learned"


def _row(method, seed, final, initial=10.4, budget=1_000_000, fraction=0.1, **extra):
    evals = [[0, initial], [100, final]]
    row = {"model": "llama_60m", "dataset": "c4", "scenario": "pretrain", "method": method, "seed": seed,
           "status": "ok", "quality_measured": True, "budget_tokens": budget, "initial_eval_loss": initial,
           "eval_loss": final, "eval_curve": evals, "train_curve": [[0, initial], [100, final - 0.1]],
           "not_learning_fraction": fraction}
    row["verdict"], row["verdict_reason"] = job_verdict(initial, evals, row["train_curve"], final)
    return {**row, **extra}


def _baseline(finals=(4.0, 4.1, 3.9), **kw):
    return [_row("adamw", s, f, **kw) for s, f in enumerate(finals)]


def test_an_improvement_below_the_fraction_of_the_baselines_is_not_learning():
    rows = _baseline() + [_row("mezo", 0, 10.0), _row("galore", 0, 4.3)]
    verdicts = sweep_verdicts(rows)
    assert [v for v, _ in verdicts] == ["learned"] * 3 + ["not_learning", "learned"]
    assert verdicts[3][1] == "improvement 0.4 is below 0.1 x the adamw baseline's 6.4"
    assert verdicts[4][1].endswith("; 95% of the adamw baseline's improvement")


def test_the_fraction_is_the_rows_own():
    rows = _baseline(fraction=0.5) + [_row("lora", 0, 7.6, fraction=0.5)]  # 2.8 of 6.4 nats: 44 %
    assert sweep_verdicts(rows)[-1][0] == "not_learning"
    rows = _baseline(fraction=0.4) + [_row("lora", 0, 7.6, fraction=0.4)]
    assert sweep_verdicts(rows)[-1][0] == "learned"


def test_an_improvement_within_the_baselines_seed_noise_is_not_learning():
    """The baseline's final losses spread by std 1.0 over three seeds: a gain of 1.5 nats is within 2 sigma of zero
    even though it passes a (tiny) fraction."""
    rows = _baseline(finals=(4.0, 5.0, 6.0), fraction=0.01) + [_row("sgd", 0, 8.9, fraction=0.01)]
    verdict, reason = sweep_verdicts(rows)[-1]
    assert verdict == "not_learning"
    assert reason == f"improvement 1.5 is within noise of zero (< {NOISE_SIGMAS:g} x the adamw baseline's std over 3 " \
                     "seeds = 2)"


def test_one_baseline_seed_gives_no_noise_rule_and_no_baseline_no_comparison():
    rows = _baseline(finals=(4.0,), fraction=0.01) + [_row("sgd", 0, 10.2, fraction=0.01)]
    assert sweep_verdicts(rows)[-1][0] == "learned"  # 0.2 nats > 0.01 x 6.4; no std from one seed
    verdict, reason = sweep_verdicts([_row("galore", 0, 4.3)])[0]
    assert verdict == "learned" and "no full-rank adamw run that learned at this budget" in reason


def test_the_baseline_is_the_same_budget_and_only_runs_that_learned():
    """A galore run at 10x the tokens is not judged against the short baseline; a diverged adamw seed is no
    baseline."""
    rows = _baseline(budget=100) + [_row("adamw", 9, 12.0, budget=10), _row("galore", 0, 9.0, budget=10)]
    verdicts = sweep_verdicts(rows)
    assert verdicts[3][0] == "diverged"
    assert verdicts[4][0] == "learned" and "no full-rank adamw run" in verdicts[4][1]


def test_rows_that_are_no_quality_measurement_get_no_verdict():
    memory = {"method": "adamw", "status": "ok", "eval_loss": 6.4}  # an old memory-sweep row: no quality_measured
    failed = _row("galore", 0, 4.0, status="oom")
    nan = {**_row("galore", 1, 4.0), "status": "diverged", "verdict": None, "error": "loss is nan at step 7"}
    assert sweep_verdicts([memory, failed, nan]) == [(None, None), (None, None), ("diverged", "loss is nan at step 7")]


@pytest.mark.parametrize("curve, verdict", [
    ([[1, 10.4], [2, 10.1], [10, 8.0], [20, 7.1], [30, 6.6]], "learned"),
    ([[1, 10.4], [2, 10.6], [10, 14.0], [20, 21.0], [30, 25.0]], "diverged"),  # GaLore at 1b, lr 1e-2, no warm-up
    ([[1, 10.4], [2, 10.4], [10, 10.41], [20, 10.39], [30, 10.4]], "not_learning"),  # MeZO for 30 steps
    ([[1, 10.4], [2, None], [30, 6.0]], "diverged"),
    ([[1, 10.4]], "not_learning"),
])
def test_a_memory_run_gets_a_health_verdict_from_its_training_loss(curve, verdict):
    assert training_verdict(curve)[0] == verdict
    assert training_verdict(curve)[1].startswith("memory run")


# train losses of a finetuning run whose weights barely move (MeZO, lr 1e-6, 20 steps of 16 x 256 on corpus_source,
# llama_tiny pretrained on WikiText-2): each step reads other batches, whose losses spread by ~0.12 nats
FROZEN = [5.519, 5.802, 5.632, 5.729, 5.649, 5.557, 5.77, 5.474, 5.679, 5.476, 5.685, 5.77, 5.843, 5.646, 5.513,
          5.846, 5.532, 5.577, 5.551, 5.612]


@pytest.mark.parametrize("losses, verdict", [
    (FROZEN, "not_learning"),  # first 5 steps 5.666, last 5 5.623: the batches' spread, not learning
    (FROZEN[::-1], "not_learning"),  # last 5 above the first by 0.043 > FLAT: was "diverged" from the batches alone
    ([x + 0.05 * i for i, x in enumerate(FROZEN)], "diverged"),  # a steady rise of 0.05 nats a step
    ([x - 0.03 * i for i, x in enumerate(FROZEN)], "learned"),  # full finetuning's fall on the same batches
])
def test_a_memory_runs_verdict_weighs_the_move_against_the_batches_spread(losses, verdict):
    """The standard error of a window's mean comes from successive differences (a trend does not count as noise):
    the frozen curve's noise is ~0.12 nats, so its 5-step means are ~0.15 nats apart at 2 standard errors."""
    got, reason = training_verdict([[step, loss] for step, loss in enumerate(losses)])
    assert got == verdict, reason
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert verdict != "not_learning" or abs(last - first) > FLAT  # the old rule (FLAT alone) would have moved


def test_a_memory_rows_own_verdict_passes_through_the_sweep_unrefined():
    """No baseline refines it (a memory run claims no quality); a failed run has no verdict."""
    learned = {"method": "lora", "status": "ok", "quality_measured": False, "verdict": "learned",
               "verdict_reason": "memory run, ..."}
    diverged = {**learned, "method": "galore", "verdict": "diverged"}
    oom = {**learned, "status": "oom"}
    assert sweep_verdicts([*_baseline(), learned, diverged, oom])[3:] == [
        ("learned", "memory run, ..."), ("diverged", "memory run, ..."), (None, None)]


def test_a_row_without_a_verdict_is_judged_from_its_curves():
    row = {**_row("galore", 0, 27.5), "verdict": None, "verdict_reason": None}
    assert sweep_verdicts([row])[0] == ("diverged", "final eval loss 27.5 is above the initial 10.4")


def test_a_baseline_on_other_tokens_is_no_baseline():
    """Losses per BPE token and per byte are different units: a byte-level adamw run judges no BPE run."""
    rows = _baseline(tokenizer="bytes") + [_row("mezo", 0, 10.0, tokenizer="bpe")]
    verdict, reason = sweep_verdicts(rows)[-1]
    assert verdict == "learned" and "no full-rank adamw run" in reason
