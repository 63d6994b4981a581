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


def test_kernel_timeline_counts_the_idle_time_between_kernels():
    from kernels.benchmark import kernel_timeline

    kernels = [{"ts": 250, "dur": 50}, {"ts": 100, "dur": 100}, {"ts": 210, "dur": 30}]  # out of order, as traced
    assert kernel_timeline(kernels) == ("3 kernels: busy 0.18 ms of a 0.20 ms span, idle 0.02 ms between them "
                                        "(longest gaps, µs: 10, 10)")
    assert kernel_timeline([]) == "no GPU kernels"
