"""The host memory guard of CPU jobs (harness/fits.py): a job past run.host_memory_limit_gib ends alone as an
`oom` row that names the limit, with both launchers; the limit is a real limit on the job's process."""
import pytest

from harness import fits
from tests.helpers import FAST, rows_of, run_cli


@pytest.mark.parametrize("launcher", ["fork", "spawn"])
def test_a_cpu_job_past_the_limit_ends_as_an_oom_row(results_dir, launcher):
    # LLaMA-60m's weights (0.22 GiB) pass planning, but with gradients and Adam's moments the job needs over 0.6 GiB
    proc = run_cli(["model=llama_60m", "run.host_memory_limit_gib=0.6", f"run.launcher={launcher}", *FAST],
                   results_dir)
    (row,) = rows_of(results_dir)
    assert row["status"] == "oom", row["error"]
    assert row["error"].startswith("host memory limit of 0.6 GiB reached (run.host_memory_limit_gib=0.6): ")
    assert "allocate" in row["error"] and row["host_memory_limit"] == int(0.6 * fits.GIB)
    assert row["launcher"] == launcher and "oom=1" in proc.stdout


def test_the_same_job_fits_without_the_limit(results_dir):
    run_cli(["model=llama_60m", "run.host_memory_limit_gib=null", *FAST], results_dir)
    (row,) = rows_of(results_dir)
    assert row["status"] == "ok" and row["host_memory_limit"] is None


def test_the_limit_is_set_on_the_process_and_refuses_an_allocation_past_it():
    """In a child process (the limit would stay on pytest's): RLIMIT_DATA turns a large allocation into an error
    that allocation_failed recognizes, from torch's allocator and from numpy."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        limit, failures = pool.apply(_allocate_past, (0.5,))
    assert limit == fits.GIB // 2 and failures == [True, True]


def _allocate_past(gib: float):
    import numpy as np
    import torch

    limit, _ = fits.limit_process(gib)
    failures = []
    for allocate in (lambda: torch.ones(2 * limit // 4), lambda: np.ones(2 * limit // 8)):
        try:
            allocate()
            failures.append(False)
        except Exception as e:
            failures.append(fits.allocation_failed(e))
    return limit, failures


def test_auto_is_a_share_of_the_available_memory():
    limit, how = fits.limit_of("auto")
    available = fits.available_bytes()
    assert available is not None and 0 < limit <= available  # Linux: /proc/meminfo is readable
    assert "run.host_memory_limit_gib=auto" in how and abs(limit - fits.AUTO_SHARE * available) < 0.05 * available
    shared, how = fits.limit_of("auto", side_by_side=4)
    assert abs(shared - limit / 4) < 0.05 * available and how.endswith("/ 4 jobs side by side")


def _spec(overrides):
    from harness.config import _compose, group_options
    from harness.recipes import apply_recipe
    from harness.schema import JobSpec

    config = _compose(overrides)
    apply_recipe(config, set(), group_options("model"), group_options("scenario"))  # as planning does
    return JobSpec.from_dict(config)


def test_weights_past_a_named_gpus_memory_are_refused_while_planning():
    from harness.schema import ConfigError

    with pytest.raises(ConfigError, match=r"llama_7b's weights alone take 25.1 GiB .* over the 22.5 GiB of "
                                          r"gpu.memory_bytes of gpu=l4"):
        fits.check_weights_fit(_spec(["model=llama_7b", "gpu=l4", "train.dtype=fp32"]), on_cpu=False)
    fits.check_weights_fit(_spec(["model=llama_7b", "gpu=l4", "train.dtype=bf16"]), on_cpu=False)  # 12.6 GiB fits
    fits.check_weights_fit(_spec(["model=llama_7b", "gpu=auto", "train.dtype=fp32"]), on_cpu=False)  # capacity unknown


def test_gpu_overrides_reach_the_jobs_figures():
    """The job takes the figures of its own composed gpu section, not the YAML re-read by name."""
    from harness.worker import _gpu_figures

    record = {}
    _gpu_figures(_spec(["gpu=h100", "gpu.peak_bf16_flops=1e15"]), record)
    assert record == {"gpu": "h100", "gpu_peak_bf16_flops": 1e15}
    record = {"gpu_name": "NVIDIA H200"}
    _gpu_figures(_spec(["gpu=auto"]), record)
    assert record["gpu"] == "h200" and record["gpu_peak_bf16_flops"] == _spec(["gpu=h200"]).gpu.peak_bf16_flops
    record = {"gpu_name": "NVIDIA H200"}
    _gpu_figures(_spec(["gpu=auto", "gpu.peak_bf16_flops=2e15"]), record)
    assert record["gpu_peak_bf16_flops"] == 2e15
