"""Helpers the Triton kernels share. The kernels are a trio sharing one name: kernels/<k>.py (kernel + autograd
Function / functional), tests/kernels/test_<k>.py (plain-PyTorch reference, odd shapes, per-dtype tolerances; runs on
CPU with TRITON_INTERPRET=1), harness/benches/bench_<k>.py (benchmark writing result rows). This folder installs as
`membench_kernels` and imports neither `methods` nor `harness`."""
import os

import torch


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its interpreter (TRITON_INTERPRET=1), not compiled."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(x) -> bool:
    """Whether a Triton kernel can take tensor x: on CUDA, or anywhere under the interpreter (TRITON_INTERPRET=1)."""
    return x.is_cuda or triton_interpreted()


def to_device_async(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on `device`, queued without waiting: through pinned memory on CUDA, since a copy from
    pageable memory first waits for the work queued before it (a backward pass)."""
    return torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda").to(device, non_blocking=True)


def cuda_time_ms(fn) -> float:
    """Milliseconds of fn()'s work on the current CUDA stream, between two events recorded around it (no
    synchronize before: work queued earlier runs first, untimed)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
