"""The kernel benchmarks' timing: warm-up first, then rounds that call every variant once."""
import pytest
import torch

from harness.benches.timing import interleaved_time_ms


def test_interleaved_rounds_call_every_variant_once_per_round():
    calls = []
    times = interleaved_time_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                torch.device("cpu"), warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(times) == {"a", "b"}
    assert all(p20 <= median <= p80 for median, p20, p80 in times.values())


def test_the_load_runs_before_every_timed_call_and_not_in_warm_up():
    calls = []
    interleaved_time_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                        warmup=1, repeats=2, before_each=lambda: calls.append("load"))
    assert calls == ["a", "b"] + ["load", "a", "load", "b"] * 2


def test_matmul_load_is_for_gpus_only():
    from harness.benches.timing import matmul_load

    assert matmul_load(torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_matmul_load_lasts_about_what_it_was_asked():
    from harness.benches.timing import matmul_load, time_ms

    load = matmul_load(torch.device("cuda"), ms=20.0)
    assert 15.0 <= time_ms(load, torch.device("cuda"), repeats=5)[0] <= 30.0


def test_kernel_timeline_counts_the_idle_time_between_kernels():
    from harness.benches.timing import kernel_timeline

    kernels = [{"ts": 250, "dur": 50}, {"ts": 100, "dur": 100}, {"ts": 210, "dur": 30}]  # out of order, as traced
    assert kernel_timeline(kernels) == ("3 kernels: busy 0.18 ms of a 0.20 ms span, idle 0.02 ms between them "
                                        "(longest gaps, µs: 10, 10)")
    assert kernel_timeline([]) == "no GPU kernels"


def test_in_stream_timing_off_cuda_is_the_synchronized_timing():
    calls = []
    times = interleaved_time_ms({"a": lambda: calls.append("a")}, torch.device("cpu"), warmup=1, repeats=2,
                                before_each=lambda: calls.append("load"), in_stream=True)
    assert calls == ["a", "load", "a", "load", "a"]
    assert times["a"][0] >= 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_in_stream_timing_leaves_out_host_work_that_overlaps_the_load():
    import time

    from harness.benches.timing import matmul_load

    device = torch.device("cuda")
    load, x = matmul_load(device, ms=40.0), torch.zeros(1, device=device)

    def host_then_kernel():  # 10 ms on the host, then one tiny kernel
        time.sleep(0.01)
        x.add_(1)

    synchronized = interleaved_time_ms({"f": host_then_kernel}, device, warmup=1, repeats=3, before_each=load)
    in_stream = interleaved_time_ms({"f": host_then_kernel}, device, warmup=1, repeats=3, before_each=load,
                                    in_stream=True)
    assert synchronized["f"][0] >= 10.0
    assert in_stream["f"][0] < 2.0
