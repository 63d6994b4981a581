"""Memory probes. Every number is bytes and names its probe:

- `CudaPhases`: torch.cuda.max_memory_allocated / max_memory_reserved, peak stats reset at each phase start,
  read after a synchronize at its end (the caching allocator sees every allocation, however short-lived).
- `NvmlSampler`: a background thread polling NVML for this process's GPU memory and the device-wide used memory.
  It sees what the allocator does not (CUDA context, cuBLAS workspace) but can miss peaks shorter than its interval.
- `LiveTensorProbe`: device-agnostic: a TorchDispatchMode that tracks every storage an op returns and a weakref
  finalizer that notices its release, so current and peak live bytes are known exactly, on CPU too. It sees op
  outputs only, not workspaces inside a kernel, and no allocator rounding or caching.
- `storage_bytes`: bytes of distinct storages behind tensors, counting tensor subclasses (e.g. quantized optimizer
  state) through their inner tensors (`__tensor_flatten__`), never numel × element_size of the wrapper.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from harness.nvml import visible_handle


def inner_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """Plain tensors that hold the data of `t` (itself, or a subclass's flattened inner tensors)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for name in names:
            inner = getattr(t, name)
            if isinstance(inner, torch.Tensor):  # a DTensor also flattens to its device mesh
                yield from inner_tensors(inner)
    else:
        yield t


def _storage_key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr()), st


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        for inner in inner_tensors(t):
            key, st = _storage_key(inner)
            if st.nbytes() and key not in seen:
                seen.add(key)
                total += st.nbytes()
    return total


def _tensors_within(value, seen: set) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif id(value) not in seen and not isinstance(value, torch.nn.Module | torch.optim.Optimizer | type):
        seen.add(id(value))
        if isinstance(value, dict):
            for item in value.values():
                yield from _tensors_within(item, seen)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                yield from _tensors_within(item, seen)
        elif hasattr(value, "__dict__"):
            yield from _tensors_within(vars(value), seen)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Tensors held by the optimizer's state, also inside the objects it keeps there (galore-torch and apollo-torch
    keep their projection matrices in a projector object per parameter)."""
    seen: set = set()
    return [t for state in optimizer.state.values() for t in _tensors_within(state, seen)]


def object_tensors(value) -> list[torch.Tensor]:
    """Tensors an object holds, through its attributes, dicts, lists and tuples (not inside modules): what a KV
    cache keeps (keys and values, or codes, scales, zeros and residual; eviction scores; spare capacity)."""
    return list(_tensors_within(value, set()))


def model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return list(model.parameters()) + list(model.buffers())


class LiveTensorProbe(TorchDispatchMode):
    """Exact live bytes of tensor storages on one device type (`device_type`, e.g. the job's: a GPU job's host copies
    of offloaded tensors are not device memory), or on any with None. `register` adds tensors made before the mode
    was on."""

    def __init__(self, device_type: str | None = None):
        super().__init__()
        self.device_type = device_type
        self._live: dict[int, int] = {}
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.window_peak = 0

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._track(t)

    def start_window(self) -> None:
        self.window_peak = self.current

    def _track(self, t: torch.Tensor) -> None:
        for inner in inner_tensors(t):
            if inner.device.type == "meta" or self.device_type not in (None, inner.device.type):
                continue
            st = inner.untyped_storage()
            nbytes = st.nbytes()
            key = st._cdata
            if nbytes == 0 or key in self._live:
                continue
            with self._lock:
                self._live[key] = nbytes
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                self.window_peak = max(self.window_peak, self.current)
            weakref.finalize(st, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class NvmlSampler:
    """Polls NVML in a thread: peak process memory (None where NVML can't see this pid) and device-wide used."""

    def __init__(self, device_index: int, interval_s: float):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = visible_handle(pynvml, device_index)
        self._interval = interval_s
        self._stop = threading.Event()
        self.process_peak: int | None = None
        self.device_peak = 0
        self.samples = 0
        self.window: dict = {}  # peaks since start_window() (a phase's, read with window_peaks())
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        nvml, pid = self._nvml, os.getpid()
        used = int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        self.device_peak = max(self.device_peak, used)
        self.window["device"] = max(self.window.get("device", 0), used)
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                self.process_peak = max(self.process_peak or 0, int(proc.usedGpuMemory))
                self.window["process"] = max(self.window.get("process", 0), int(proc.usedGpuMemory))
        self.samples += 1

    def start_window(self) -> None:
        self.window = {}

    def window_peaks(self, name: str) -> dict:
        """nvml_process_peak_<name> and nvml_device_peak_<name>: the peaks sampled since start_window(), one sample
        taken now (a phase shorter than the interval still gets one)."""
        self._sample()
        return {f"nvml_process_peak_{name}": self.window.get("process"),
                f"nvml_device_peak_{name}": self.window.get("device")}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def start(self) -> NvmlSampler:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {"nvml_process_peak": self.process_peak, "nvml_device_peak": self.device_peak,
                "nvml_samples": self.samples}


class PhaseProbe:
    """Per-phase peaks for one probed step: `with probe.phase("forward"): ...` records, for that phase,
    the CUDA allocated/reserved peaks and the live-tensor peak, plus live bytes at its start and end."""

    def __init__(self, device: torch.device, model: torch.nn.Module, live: LiveTensorProbe | None):
        self.device = device
        self.model = model
        self.live = live
        self.record: dict[str, int] = {}
        self.grads_peak = 0

    @contextmanager
    def phase(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)  # the training loop has read the step's peak so far
            self.record[f"allocated_start_{name}"] = torch.cuda.memory_allocated(self.device)
        if self.live is not None:
            self.live.start_window()
            self.record[f"live_start_{name}"] = self.live.current
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            self.record[f"peak_allocated_{name}"] = torch.cuda.max_memory_allocated(self.device)
            self.record[f"peak_reserved_{name}"] = torch.cuda.max_memory_reserved(self.device)
            self.record[f"allocated_end_{name}"] = torch.cuda.memory_allocated(self.device)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.grads_peak = max(self.grads_peak, storage_bytes(grads))
        if self.live is not None:
            self.record[f"live_peak_{name}"] = self.live.window_peak
            self.record[f"live_end_{name}"] = self.live.current


class StepPeaks:
    """CUDA allocated peak of each training step: read at the step's end, then the counters restart (the probed
    step's phases restart them too, so their peaks join in). Says which step sets a job's peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.allocated: list[int] = []
        self.reserved = self.warmup_reserved = 0
        self.warmup_steps = 0

    def end_step(self, phase_record: dict, warmup: bool) -> None:
        phase_peaks = [v for k, v in phase_record.items() if k.startswith("peak_allocated_")]
        self.allocated.append(max([torch.cuda.max_memory_allocated(self.device), *phase_peaks]))
        self.reserved = max(self.reserved, torch.cuda.max_memory_reserved(self.device))
        if warmup:
            self.warmup_reserved, self.warmup_steps = self.reserved, self.warmup_steps + 1
        torch.cuda.reset_peak_memory_stats(self.device)

    def record_into(self, record: dict) -> None:
        """step_peak_allocated, the warm-up steps' and all steps' peaks, and the overall allocated / reserved peaks
        (with the load's and the phases' already in `record`)."""
        record["step_peak_allocated"] = self.allocated
        if self.warmup_steps:
            record.update(peak_allocated_warmup=max(self.allocated[:self.warmup_steps]),
                          peak_reserved_warmup=self.warmup_reserved)
        record["peak_allocated_steps"] = max(self.allocated)
        record["peak_allocated"] = max(v for k, v in record.items() if k.startswith("peak_allocated_"))
        record["peak_reserved"] = max([self.reserved, *(v for k, v in record.items() if k.startswith("peak_reserved_"))])


@contextmanager
def no_phase(name: str):
    yield
