"""One training job traced without memory: the model, the method's transforms and optimizer and two training steps
run under torch's FakeTensorMode (shapes and dtypes only, no data, on any machine), watched by the live-tensor probe
(harness.probes.LiveTensorProbe). Every storage the probe sees born or freed is replayed through a model of the CUDA
caching allocator (harness.cuda_alloc), so each phase's peak comes out as torch.cuda.max_memory_allocated would give
it on a GPU, split by what the bytes hold.

What the trace does to look like the GPU job (a CUDA job, the rows it is checked against):
- scaled_dot_product_attention calls the kernel CUDA picks: flash attention for fp16/bf16 without a mask, else
  memory-efficient attention (on the CPU torch would pick its own kernels, which keep other tensors for backward);
- methods are built for a CUDA device where their code asks (AdamW's fused step);
- the cuBLAS workspace that torch allocates through the caching allocator at the first matrix product of a thread
  (the training thread in forward, autograd's device thread in backward) is allocated there: CUBLAS_WORKSPACE bytes.
What it cannot see: buffers a kernel allocates inside itself and frees before returning (flash attention's backward
accumulators, cuSOLVER's SVD workspace, Triton kernels' scratch); `harness.estimate` adds the calibrated remainder.
"""
from __future__ import annotations

import dataclasses
import itertools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import _disable_current_modes

from harness.cuda_alloc import CachingAllocator
from harness.probes import LiveTensorProbe, inner_tensors, model_tensors, optimizer_state_tensors

# torch's default cuBLAS workspace on Hopper (sm90) with CUDA >= 12: CUBLAS_WORKSPACE_CONFIG=:4096:8, 8 chunks of
# 4 MiB per handle and stream (aten/src/ATen/cuda/CublasHandlePool.cpp); one per thread that runs matrix products.
CUBLAS_WORKSPACE = 32 << 20
_CUBLAS_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
               torch.ops.aten.baddbmm.default, torch.ops.aten._addmm_activation.default}
# .item() of a fake tensor has no value: 1 (1.0 for floating point, True for bool) stands in, so code that reads a
# scalar (a fill value, a norm for clipping) goes on; code whose allocations depend on such a value is not traced
# faithfully (none of the registered methods allocates by a value read back).
SCALAR_STAND_IN = {False: 1, True: 1.0}
# Ops run on real data even in the trace: their (small) results are read back to choose what to allocate.
_REAL_OPS = {torch.ops.aten.randperm.default, torch.ops.aten.randperm.generator}
PARTS = ("weights", "grads", "optimizer_state", "activations", "temporaries", "workspace", "allocator")
PHASES = ("load", "forward", "backward", "optimizer")


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def keys_of(tensors) -> set[int]:
    return {storage_key(inner) for t in tensors for inner in inner_tensors(t) if inner.untyped_storage().nbytes()}


class _TraceProbe(LiveTensorProbe):
    """The live-tensor probe, also replaying each storage's birth and release through the allocator model and
    logging them (key, bytes, +1/-1) for the breakdown."""

    def __init__(self, allocator: CachingAllocator, workspaces: bool):
        super().__init__()
        self.allocator = allocator
        self.log: list[tuple[int, int, int]] = []  # (serial, tensor bytes, +block bytes | -block bytes)
        self.phase = "load"
        self.born: dict[int, str] = {}  # serial -> phase
        self.serial: dict[int, int] = {}  # live storage (_cdata, reused after a free) -> its serial number
        self.workspaces: set[str] = set() if workspaces else {"main", "backward"}  # CPU: no cuBLAS workspace

    def _track(self, t: torch.Tensor) -> None:
        before = len(self._live)
        super()._track(t)
        for key in itertools.islice(reversed(self._live), len(self._live) - before):
            self.serial[key] = self.allocate(self._live[key])

    def allocate(self, nbytes: int) -> int:
        serial = len(self.born)
        self.born[serial] = self.phase
        self.log.append((serial, nbytes, self.allocator.malloc(serial, nbytes)))
        return serial

    def _release(self, key: int) -> None:
        super()._release(key)
        serial = self.serial.pop(key, None)
        if serial is not None:
            self.log.append((serial, 0, -self.allocator._live[serial].size))
            self.allocator.free(serial)

    def serials(self, tensors) -> set[int]:
        return {self.serial[k] for k in keys_of(tensors) if k in self.serial}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # a value read back (.item(), int(t)): no data here
            return SCALAR_STAND_IN[args[0].dtype.is_floating_point or args[0].dtype == torch.bool]
        if func in _REAL_OPS:  # a random choice the method reads back (LISA's layers): drawn for real, as the job would
            with _disable_current_modes():
                return func(*args, **(kwargs or {}))
        thread = "backward" if self.phase == "backward" else "main"
        if func in _CUBLAS_OPS and thread not in self.workspaces:
            self.workspaces.add(thread)
            self.born[self.allocate(CUBLAS_WORKSPACE)] = "workspace"
        return super().__torch_dispatch__(func, types, args, kwargs)


def _cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention as a CUDA device dispatches it (flash, else efficient)."""
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                  scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, query.requires_grad,
                                                                  dropout_p, is_causal, scale=scale)[0]


@contextmanager
def _cuda_attention():
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _cuda_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@contextmanager
def _fused_8bit_step():
    """On CUDA the 8-bit AdamW step is one Triton kernel that updates parameter and quantized moments in place
    (methods/adamw8bit.py, kernels/adamw8bit.py): no tensor is made. The trace runs on fake CPU tensors, where the
    method takes its plain-torch path (fp32 copies of the moments, the gradient and the weight: 2.6 GB of
    temporaries for LLaMA-7B's embedding); the kernel's update is left out instead, its state kept as initialized."""
    import methods.adamw8bit as adamw8bit

    plain = adamw8bit._step_torch
    adamw8bit._step_torch = lambda *args, **kwargs: None
    try:
        yield
    finally:
        adamw8bit._step_torch = plain


@contextmanager
def _eager():
    """torch.compile'd functions (torchao's optimizer steps) run eagerly, so that the probe sees their tensors."""
    torch.compiler.set_stance("force_eager")
    try:
        yield
    finally:
        torch.compiler.set_stance("default")


@dataclass
class PhasePeak:
    peak: int  # allocated bytes (caching-allocator model) at the phase's high-water mark
    parts: dict  # PARTS -> bytes at that moment (allocator: blocks beyond the tensors' bytes)
    live_peak: int  # the live-tensor probe's peak of the phase (tensor bytes, no allocator)


@dataclass
class Trace:
    phases: dict[str, PhasePeak] = field(default_factory=dict)
    weights: int = 0
    grads: int = 0
    optimizer_state: int = 0
    activations: int = 0
    live_peak: int = 0
    reserved_peak: int = 0
    n_params: int = 0
    n_trainable: int = 0


# Parts that need CUDA inside their own code (bitsandbytes) or a package often absent on a CPU machine, traced as
# the registered part whose memory is the same rule: the fused-loss kernels keep the same tensors as our chunked
# fused_ce (the H200 rows of LLaMA-1b: equal peaks to 0.0001 %), and galore-torch's bitsandbytes 8-bit GaLore keeps
# the layout of our galore8bit (the committed peaks differ by 0.5 % at 60m, 0.01 % at 1b, 0.07 % at 7b).
TRANSFORM_STAND_INS = {"liger_fused_ce": "fused_ce", "cce_fused_ce": "fused_ce"}
OPTIMIZER_STAND_INS = {"galore_torch8bit": "galore8bit"}


def traceable(method):
    """The method with its stand-ins (TRANSFORM_STAND_INS, OPTIMIZER_STAND_INS) in place."""
    transforms = tuple(TRANSFORM_STAND_INS.get(t, t) for t in method.transforms)
    options = {TRANSFORM_STAND_INS.get(k, k): (v if k not in TRANSFORM_STAND_INS else {})
               for k, v in method.transform_options.items()}
    optimizer = method.optimizer
    if optimizer["name"] in OPTIMIZER_STAND_INS:
        optimizer = {"name": OPTIMIZER_STAND_INS[optimizer["name"]], "rank": optimizer["rank"]}
    return dataclasses.replace(method, transforms=transforms, transform_options=options, optimizer=optimizer)


def _tracing(spec, device: str):
    """What a trace of `spec` on `device` sets up: the target device, the job's dtype there (auto: bf16 on a GPU that
    has it, fp32 on the CPU, as harness.train.resolve_dtype), the allocator model, its probe (cuBLAS workspaces on
    CUDA only) and the attention the target runs."""
    from harness.train import DTYPES

    target = torch.device(device)
    cuda = target.type == "cuda"
    dtype = DTYPES.get(spec.train.dtype, torch.bfloat16 if cuda else torch.float32)
    allocator = CachingAllocator()
    attention = _cuda_attention() if cuda else nullcontext()
    return target, dtype, allocator, _TraceProbe(allocator, workspaces=cuda), attention


def trace_job(spec, batch_size: int | None = None, steps: int = 2, device: str = "cuda") -> Trace:
    """Trace `steps` training steps of the job `spec` (a harness.schema.JobSpec) at `batch_size` (default: the
    job's) as it runs on `device` (cuda: the kernels, dtype and workspace of a GPU job; cpu: those of a CPU job, whose
    live-tensor peak is its row's cpu_live_peak). No memory is used: every tensor is fake."""
    from harness.models import build_model
    from harness.parts import apply_transforms, build_optimizer, loop_step

    spec = dataclasses.replace(spec, method=traceable(spec.method))
    cpu = torch.device("cpu")
    target, dtype, allocator, probe, attention = _tracing(spec, device)
    marks: list[tuple[str, int, int, int]] = []  # (phase, log index at its peak, peak, live-tensor peak)
    grads: set[int] = set()
    activations: set[int] = set()

    @contextmanager
    def phase(name: str):
        probe.phase, start = name, len(probe.log)
        allocator.reset_peak()
        probe.start_window()
        yield
        if name == "backward":
            grads.update(probe.serials(p.grad for p in model.parameters() if p.grad is not None))
        if name == "forward":
            activations.update(s for s in probe.serial.values() if probe.born[s] == "forward")
        marks.append((name, _peak_index(probe.log, start, allocator), allocator.peak, probe.window_peak))
        probe.phase = "between"

    kernels = _fused_8bit_step() if target.type == "cuda" else nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), attention, kernels, _eager(), probe:
        model = apply_transforms(spec.method, build_model(spec.model, dtype, cpu), cpu)
        model.train()
        marks.append(("load", _peak_index(probe.log, 0, allocator), allocator.peak, probe.peak))
        optimizer = build_optimizer(spec.method, model, target)
        if "step" in vars(optimizer):  # a torch.compile'd step hidden from dispatch modes: run it eager, traced
            optimizer.step = optimizer.step.__wrapped__
        step_fn = loop_step(spec.method)
        for _ in range(steps):
            probe.phase = "batch"
            step_fn(model, optimizer, torch.zeros(batch_size or spec.train.batch_size, spec.train.seq_len,
                                                  dtype=torch.long), phase)
        weights = probe.serials(model_tensors(model))
        states = probe.serials(optimizer_state_tensors(optimizer))
        trace = Trace(n_params=sum(p.numel() for p in model.parameters()),
                      n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      weights=sum(probe._live[k] for k in keys_of(model_tensors(model)) if k in probe._live),
                      optimizer_state=sum(probe._live[k] for k in keys_of(optimizer_state_tensors(optimizer))
                                          if k in probe._live),
                      live_peak=probe.peak, reserved_peak=allocator.peak_reserved)
    classes = {}
    for serial, born in probe.born.items():
        classes[serial] = ("workspace" if born == "workspace" else "weights" if serial in weights
                           else "optimizer_state" if serial in states else "grads" if serial in grads
                           else "activations" if serial in activations else "temporaries")
    for name, index, peak, live_peak in marks:
        if name not in trace.phases or peak >= trace.phases[name].peak:
            trace.phases[name] = PhasePeak(peak, _parts_at(probe.log, index, classes), live_peak)
    forward = trace.phases.get("forward")
    trace.activations = forward.parts["activations"] if forward else 0
    trace.grads = max((p.parts["grads"] for p in trace.phases.values()), default=0)
    return trace


def _peak_index(log, start: int, allocator: CachingAllocator) -> int:
    """The log position (exclusive) where the allocated bytes last reached the phase's peak."""
    level = allocator.allocated - sum(blocks for _, _, blocks in log[start:])
    best, at = level, start
    for i in range(start, len(log)):
        level += log[i][2]
        if level >= best:
            best, at = level, i + 1
    return at


def _parts_at(log, index: int, classes: dict) -> dict:
    """Bytes per part of what is allocated after log[:index]; `allocator`: the blocks' bytes beyond the tensors'."""
    tensors, blocks = {}, {}
    for serial, nbytes, size in log[:index]:
        if size > 0:
            tensors[serial], blocks[serial] = nbytes, size
        else:
            del tensors[serial], blocks[serial]
    parts = dict.fromkeys(PARTS, 0)
    for serial, nbytes in tensors.items():
        parts[classes[serial]] += nbytes
    parts["allocator"] = sum(blocks.values()) - sum(tensors.values())
    return parts


def trace_prefill(spec, batch: int, prompt_len: int, device: str = "cuda") -> dict:
    """A generate job's prefill traced as trace_job traces training (scenario=generate, harness/infer.py): the model
    in eval mode, the method's KV cache, `batch` prompts of `prompt_len` tokens in one forward. Returns the cache's
    bytes (the storages of every tensor it holds, as harness.infer.kv_bytes counts them), the allocated peak of the
    prefill (caching-allocator model) and its live-tensor peak."""
    from harness.infer import prefill
    from harness.models import build_model
    from harness.parts import apply_transforms, cache_part
    from harness.probes import object_tensors

    cpu = torch.device("cpu")
    _, dtype, allocator, probe, attention = _tracing(spec, device)
    module, options = cache_part(spec.method)
    with FakeTensorMode(allow_non_fake_inputs=True), attention, probe, torch.no_grad():
        model = apply_transforms(spec.method, build_model(spec.model, dtype, cpu), cpu)
        model.eval()
        allocator.reset_peak()
        probe.start_window()
        ids = torch.zeros(batch, prompt_len, dtype=torch.long)
        cache, _ = prefill(model, lambda: module.build(model, options, prompt_len + 1), ids, None)
        cache_bytes = sum(probe._live.get(k, 0) for k in keys_of(object_tensors(cache)))
        return {"kv_cache_bytes": cache_bytes, "peak_prefill": allocator.peak, "live_peak_prefill": probe.window_peak}
