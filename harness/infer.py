"""The generate job (scenario=generate): load → prefill → decode, each phase probed, then fidelity. Fills `record`
as it goes, so a job that fails half-way still reports what it measured.

Any causal LM of transformers runs: the loop calls the model with a `Cache` (methods.CACHES builds it) and feeds
back the greedy token, one decode step at a time. Prefill: infer.prompt_len tokens for each of infer.batch_size
prompts (held-out windows of the dataset, wrapping around a short split), in forwards of infer.prefill_batch
sequences whose caches are then joined (methods.kv_cache.join_batches), only the last position's logits computed.
Decode: infer.decode_len steps; every step is bracketed by a device synchronize, and decode_ms is the median
(p20, p80) per step over all of them but the first (where kernels compile). A warm-up (a short prompt, two decode
steps) runs first, out of every figure. Peaks: `torch.cuda` allocator peaks reset at each phase's start (CPU: the
live-tensor probe's peak), NVML sampled over the job and per phase (nvml_*_peak_<phase>). kv_cache_bytes: the
storages behind every tensor the cache holds (codes, scales, zeros, residual, scores, spare capacity), counted at
the end of the phase.

infer.batch_size=auto runs harness.batch_search instead, which calls `measure` in child processes.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from harness import PROJECT_ROOT
from harness import data as data_lib
from harness.loading import from_checkpoint
from harness.models import build_model
from harness.parts import apply_transforms, cache_part
from harness.probes import LiveTensorProbe, NvmlSampler, model_tensors, object_tensors, storage_bytes
from harness.schema import CheckpointSpec, JobSpec
from harness.tokenizer import cache_dir
from harness.train import resolve_dtype, seed_everything
from methods.kv_cache import bind, join_batches

WARMUP_PROMPT = 256  # tokens of the warm-up prompt (two KIVI groups: its quantize and decode kernels compile)


def run_generate(spec: JobSpec, device: torch.device, record: dict, inject_fault=lambda stage, model: None) -> None:
    if spec.infer.batch_size == "auto":
        from harness.batch_search import search

        search(spec, device, record)
        return
    cuda = device.type == "cuda"
    nvml = NvmlSampler(device.index or 0, spec.run.nvml_interval_ms / 1000).start() if cuda else None
    try:
        measure(spec, device, record, spec.infer.batch_size, spec.infer.fidelity, inject_fault, nvml)
    finally:
        if nvml is not None:
            record.update(nvml.stop())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompts(tokens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """`batch` windows of `length` tokens, consecutive, wrapping around `tokens` when it is too short for all."""
    usable = len(tokens) - length + 1
    starts = [(i * length) % usable for i in range(batch)]
    return torch.stack([tokens[s:s + length] for s in starts])


class Phases:
    """Per-phase peaks: CUDA allocator peaks (reset at the phase's start) or the live-tensor probe's on CPU."""

    def __init__(self, device: torch.device, record: dict, live: LiveTensorProbe | None, nvml: NvmlSampler | None):
        self.device, self.record, self.live, self.nvml = device, record, live, nvml

    def __call__(self, name: str):
        phases = self

        class _Phase:
            def __enter__(self):
                _sync(phases.device)
                if phases.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(phases.device)
                if phases.live is not None:
                    phases.live.start_window()
                    phases.live.__enter__()
                if phases.nvml is not None:
                    phases.nvml.start_window()
                self.clock = time.perf_counter()

            def __exit__(self, *exc):
                _sync(phases.device)
                phases.record[f"{name}_s"] = time.perf_counter() - self.clock
                if phases.live is not None:
                    phases.live.__exit__(*exc)
                    phases.record[f"live_peak_{name}"] = phases.live.window_peak
                if phases.device.type == "cuda":
                    phases.record[f"peak_allocated_{name}"] = torch.cuda.max_memory_allocated(phases.device)
                    phases.record[f"peak_reserved_{name}"] = torch.cuda.max_memory_reserved(phases.device)
                if phases.nvml is not None:
                    phases.record.update(phases.nvml.window_peaks(name))

        return _Phase()


def kv_bytes(cache) -> int:
    return storage_bytes(object_tensors(cache))


def prefill(model, build_cache, ids: torch.Tensor, micro_batch: int | None):
    """(cache, first generated tokens (B, 1)): the prompts in forwards of `micro_batch` sequences, caches joined
    (all at once for a cache whose state cannot be joined along the batch: `joinable = False`)."""
    caches, firsts = [], []
    cache = build_cache()
    step = micro_batch or len(ids) if getattr(cache, "joinable", True) else len(ids)
    for start in range(0, len(ids), step):
        cache = cache if start == 0 else build_cache()
        bind(model, cache)
        with getattr(cache, "prefill_context", lambda m: nullcontext())(model):
            logits = model(input_ids=ids[start:start + step], past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits
        caches.append(cache)
        firsts.append(logits[:, -1].argmax(dim=-1, keepdim=True))
        del logits
    cache = join_batches(caches)
    bind(model, cache)
    return cache, torch.cat(firsts)


def decode(model, cache, tokens: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    """Greedy decoding of `steps` tokens; per-step wall times in ms (each step synchronized)."""
    times = []
    for _ in range(steps):
        _sync(device)
        clock = time.perf_counter()
        logits = model(input_ids=tokens, past_key_values=cache, use_cache=True).logits
        tokens = logits[:, -1].argmax(dim=-1, keepdim=True)
        _sync(device)
        times.append((time.perf_counter() - clock) * 1000)
    return times


def load(spec: JobSpec, device: torch.device, record: dict):
    """(model in eval mode before the method's transforms, held-out tokens)."""
    dtype = resolve_dtype(spec.train.dtype, device)
    seed_everything(spec.train.seed)
    record.update(dtype=str(dtype).removeprefix("torch."), seed=spec.train.seed)
    checkpoint = isinstance(spec.model, CheckpointSpec)  # weights as saved; its transforms come after the reference
    model = (from_checkpoint(spec.model.path, dtype, device) if checkpoint else build_model(spec.model, dtype, device))
    model.eval()
    results = Path(os.path.expanduser(spec.run.results_dir))
    folder = cache_dir(results if results.is_absolute() else PROJECT_ROOT / results)
    _, held_out, info = data_lib.load_tokens(spec.dataset, getattr(model.config, "vocab_size", None), folder)
    record.update(info)
    return model, held_out


@torch.no_grad()
def measure(spec: JobSpec, device: torch.device, record: dict, batch: int, fidelity: bool,
            inject_fault=lambda stage, model: None, nvml: NvmlSampler | None = None) -> None:
    """One generate run at `batch` prompts: fills `record` (module docstring)."""
    infer, cuda = spec.infer, device.type == "cuda"
    total = infer.prompt_len + infer.decode_len
    record.update(batch_size=batch, seq_len=total, prompt_len=infer.prompt_len, decode_len=infer.decode_len,
                  prefill_batch=infer.prefill_batch or batch, cache=spec.method.cache)
    clock = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    model, held_out = load(spec, device, record)
    reference = None
    if fidelity:  # the full-cache reference runs on the model as loaded, before any weight quantization
        from harness.fidelity import reference_log_probs

        reference = reference_log_probs(model, held_out, infer)
    model = apply_transforms(spec.method, model, device).eval()
    record.update(n_params=sum(p.numel() for p in model.parameters()), weights=storage_bytes(model_tensors(model)))
    _sync(device)
    record["load_s"] = time.perf_counter() - clock
    if cuda:
        record["peak_allocated_load"] = torch.cuda.max_memory_allocated(device)
    module, options = cache_part(spec.method)
    inject_fault("after_load", model)

    def build_cache(tokens=total):
        return module.build(model, options, tokens)

    ids = prompts(held_out, batch, infer.prompt_len).to(device)
    warm = ids[:1, :min(infer.prompt_len, WARMUP_PROMPT)]
    cache, first = prefill(model, lambda: build_cache(warm.shape[1] + 2), warm, None)
    decode(model, cache, first, 2, device)
    del cache, first
    live = LiveTensorProbe() if not cuda and spec.run.live_tensor_probe else None
    if live is not None:
        live.register(model_tensors(model) + [ids])
    phase = Phases(device, record, live, nvml)
    with phase("prefill"):
        cache, first = prefill(model, build_cache, ids, infer.prefill_batch)
    record.update(kv_cache_bytes_prefill=kv_bytes(cache), ttft_s=record["prefill_s"],
                  prefill_tokens_per_s=batch * infer.prompt_len / record["prefill_s"])
    with phase("decode"):
        times = decode(model, cache, first, infer.decode_len, device)
    timed = times[1:] or times
    median = float(np.median(timed))
    record.update(kv_cache_bytes=kv_bytes(cache), kv_cache_tokens=batch * total,
                  decode_ms=median, decode_ms_p20=float(np.percentile(timed, 20)),
                  decode_ms_p80=float(np.percentile(timed, 80)), decode_steps_timed=len(timed),
                  decode_tokens_per_s=batch * 1000 / median, decode_tokens_per_s_per_sequence=1000 / median)
    record["kv_bytes_per_token"] = record["kv_cache_bytes"] / record["kv_cache_tokens"]
    del cache
    bind(model, None)
    if cuda:
        record["peak_allocated"] = max(record[k] for k in ("peak_allocated_load", "peak_allocated_prefill",
                                                             "peak_allocated_decode"))
        record["peak_reserved"] = max(torch.cuda.max_memory_reserved(device), record["peak_reserved_prefill"],
                                      record["peak_reserved_decode"])
    if live is not None:
        record.update(cpu_live_peak=live.peak)
    if fidelity:
        from harness.fidelity import measure_fidelity

        record.update(measure_fidelity(model, build_cache, held_out, infer, reference))
