"""The kernel benchmarks' timing: warm-up first, then rounds that call every variant once."""
import torch

from kernels.benchmark import interleaved_time_ms


def test_interleaved_rounds_call_every_variant_once_per_round():
    calls = []
    times = interleaved_time_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                torch.device("cpu"), warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(times) == {"a", "b"}
    assert all(p20 <= median <= p80 for median, p20, p80 in times.values())
