"""scenario=generate on CPU with the tiny model: KV-cache bytes counted exactly, fidelity of the full cache against
itself, the batch search, and a reference method whose package is absent."""
import math

import pytest
import torch

from harness.batch_search import largest_fitting
from harness.config import plan
from harness.infer import measure
from harness.schema import ConfigError
from methods import MissingRequirement

BASE = ["scenario=generate", "run.device=cpu", "infer.prompt_len=150", "infer.decode_len=10", "infer.batch_size=3"]


def _run(results_dir, *overrides, fidelity=False) -> dict:
    (job,) = plan(BASE + list(overrides) + [f"run.results_dir={results_dir}"])
    record: dict = {}
    measure(job.spec, torch.device("cpu"), record, job.spec.infer.batch_size, fidelity)
    return record


def test_full_cache_bytes_are_keys_and_values_of_every_token(results_dir):
    """llama_tiny: 2 layers, 4 heads of 16, fp32 on CPU: 2 (K, V) × layers × batch × heads × tokens × 16 × 4 B."""
    record = _run(results_dir, "method=kv_full")
    assert record["kv_cache_bytes"] == 2 * 2 * 3 * 4 * 160 * 16 * 4
    assert record["kv_cache_bytes_prefill"] == 2 * 2 * 3 * 4 * 150 * 16 * 4
    assert record["decode_steps_timed"] == 9 and record["decode_tokens_per_s"] > 0


def test_kivi_bytes_are_codes_scales_zeros_and_the_fp16_residual(results_dir):
    """Group 40 over 160 tokens: 4 groups quantized (buffers reserved for them), no residual left; per layer and
    (batch, head): key codes T·D·b/8, key scale + zero 2·(T/G)·D fp16, value codes T·D·b/8, value scale + zero
    2·T·(D/G_v) fp16 (G_v = min(G, D) = 16). (A group that is no power of two takes the torch path: fast on CPU.)"""
    record = _run(results_dir, "method=kivi2", "method.cache_options.group=40", "run.live_tensor_probe=false")
    t, d, bits = 160, 16, 2
    per_head = t * d * bits // 8 + 2 * (t // 40) * d * 2 + t * d * bits // 8 + 2 * t * (d // 16) * 2
    assert record["kv_cache_bytes"] == 2 * 3 * 4 * per_head
    after_prefill = 3 * 40  # 150 tokens: 3 groups quantized (the buffers hold 4), 30 in the fp16 residual
    assert record["kv_cache_bytes_prefill"] == 2 * 3 * 4 * (per_head + 2 * (150 - after_prefill) * d * 2)


def test_fidelity_of_the_full_cache_against_itself_is_perfect(results_dir):
    record = _run(results_dir, "method=kv_full", "infer.fidelity_len=48", "infer.fidelity_prefill=8",
                  "infer.fidelity_windows=2", fidelity=True)
    assert record["fidelity_tokens"] == 2 * 40
    assert record["fidelity_top1"] == 1.0 and record["fidelity_kl"] < 1e-9
    assert math.isclose(record["fidelity_ppl"], record["fidelity_ppl_full"], rel_tol=1e-5)


def test_a_window_cache_loses_fidelity_that_the_full_cache_keeps(results_dir):
    record = _run(results_dir, "method=window_only", "method.cache_options.window=8", "infer.fidelity_len=64",
                  "infer.fidelity_prefill=4", "infer.fidelity_windows=2", fidelity=True)
    assert record["fidelity_kl"] > 1e-4 and record["fidelity_top1"] < 1.0


def test_a_reference_cache_without_its_package_is_a_missing_requirement(results_dir):
    pytest.importorskip("torch")
    try:
        import optimum.quanto  # noqa: F401
        pytest.skip("optimum-quanto is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingRequirement, match="optimum.quanto"):
        _run(results_dir, "method=hf_quanto")


def test_the_search_finds_the_largest_batch_with_few_probes():
    probed = []

    def probe(batch):
        probed.append(batch)
        return batch <= 37, 100 + 10 * batch

    assert largest_fitting(probe, 1024, budget=100 + 10 * 37)[0] == 37
    assert probed == [1, 2, 4, 37, 38]  # the line through the peaks at 2 and 4 predicts 37
    for largest in (3, 10, 50, 300):  # peaks that grow faster than a line: the guess misses, bisection corrects
        assert largest_fitting(lambda b, n=largest: (b <= n, 100 + b * b), 1024, budget=100 + 33**2)[0] == largest
    assert largest_fitting(lambda b: (b <= 5, None), 1024, budget=0)[0] == 5  # no peaks: bisection alone
    assert largest_fitting(lambda b: (False, 10), 64, budget=0) == (0, [1])
    assert largest_fitting(lambda b: (True, 10 * b), 7, budget=10**9)[0] == 7
    assert largest_fitting(lambda b: (b <= 3, 10 * b), 64, budget=10**9, start=4)[0] == 3
    flat = largest_fitting(lambda b: (b <= 20, 100 + 10 * b * (b > 4)), 1024, budget=300, per_item=lambda b: 10)
    assert flat[0] == 20 and flat[1][:4] == [1, 2, 4, 24]  # flat peaks at 2 and 4: the per-item floor guesses 24
    assert largest_fitting(lambda b: (b <= 6, 10 * b), 64, budget=10**9, start=4)[0] == 6


def test_a_training_transform_is_refused_with_a_cache(results_dir):
    """The generate cases of the bad-input table are in tests/test_bad_input.py; this one names the allowed list."""
    with pytest.raises(ConfigError, match="checkpointing is not an inference transform; allowed with "
                                          "scenario=generate: nf4_weights, bnb_int8, bnb_nf4"):
        plan(BASE[:-1] + ["method=kivi2", "method.transforms=[checkpointing]", f"run.results_dir={results_dir}"])


def test_every_numeric_cache_option_has_a_range():
    import dataclasses

    import methods
    from methods.options import rules_of

    unchecked = [f"{name}.{f.name}" for name, part in methods.CACHES.items() for f in dataclasses.fields(part.Options)
                 if f.type in ("int", "float", "list[str]") and f.name not in rules_of(part.Options)]
    assert not unchecked
