"""The training job: build → warm up → one probed step → timed steps → held-out eval. Fills `record` as it goes,
so a job that fails half-way still reports what it measured up to the failure.

Timing: warm-up steps are excluded; every step is bracketed by a device synchronize; step_ms is the median of the
timed steps, with p20/p80. The probed step is the last warm-up step (optimizer state already exists) and is
not timed: per-phase synchronizes and the live-tensor probe slow it down.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from harness import PROJECT_ROOT
from harness import data as data_lib
from harness.models import build_model, flops_per_token
from harness.parts import apply_transforms, build_optimizer, loop_step
from harness.probes import (
    LiveTensorProbe,
    NvmlSampler,
    PhaseProbe,
    StepPeaks,
    model_tensors,
    no_phase,
    optimizer_state_tensors,
    storage_bytes,
)
from harness.schema import JobSpec
from harness.tokenizer import cache_dir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _lr_factor(spec: JobSpec):
    warm, total, cosine = spec.train.lr_warmup_steps, spec.train.steps, spec.train.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_training(spec: JobSpec, device: torch.device, record: dict, inject_fault=lambda stage, model: None) -> None:
    cuda = device.type == "cuda"
    dtype = resolve_dtype(spec.train.dtype, device)
    seed = spec.train.seed
    record.update(dtype=str(dtype).removeprefix("torch."), seed=seed, seed_torch=seed, seed_numpy=seed,
                  seed_python=seed, data_order_seed=seed)
    seed_everything(spec.train.seed)
    nvml = NvmlSampler(device.index or 0, spec.run.nvml_interval_ms / 1000).start() if cuda else None
    try:
        _train_and_eval(spec, device, dtype, record, inject_fault)
    finally:
        if nvml is not None:
            record.update(nvml.stop())
        if cuda:
            record["peak_reserved"] = max(record.get("peak_reserved") or 0, torch.cuda.max_memory_reserved(device))


def _train_and_eval(spec, device, dtype, record, inject_fault) -> None:
    cuda, train = device.type == "cuda", spec.train
    clock = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)  # creates the CUDA context (reading the allocator's counters does not)
        torch.cuda.reset_peak_memory_stats(device)
        record["allocated_baseline"] = torch.cuda.memory_allocated(device)
        record["cuda_init_s"] = time.perf_counter() - clock
    model = apply_transforms(spec.method, build_model(spec.model, dtype, device), device)
    model.train()
    record.update(n_params=sum(p.numel() for p in model.parameters()), weights=storage_bytes(model_tensors(model)))
    if cuda:
        _sync(device)
        record["peak_allocated_load"] = torch.cuda.max_memory_allocated(device)
    record["load_s"] = time.perf_counter() - clock
    print(f"loaded {record['n_params']:,} parameters in {record['load_s']:.1f} s", flush=True)  # progress in log.txt
    results_dir = Path(os.path.expanduser(spec.run.results_dir))
    train_tokens, eval_tokens, info = data_lib.load_tokens(spec.dataset, spec.model.vocab_size,
                                                           cache_dir(results_dir if results_dir.is_absolute()
                                                                     else PROJECT_ROOT / results_dir))
    record.update(info, train_corpus_tokens=len(train_tokens), eval_corpus_tokens=len(eval_tokens))
    windows = data_lib.RandomWindows(train_tokens, train.batch_size, train.seq_len, train.seed)
    optimizer = build_optimizer(spec.method, model, device)
    record["n_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)  # after LoRA / LISA
    lr_factor = _lr_factor(spec)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step_fn = loop_step(spec.method)
    inject_fault("after_load", model)
    record["data_s"] = time.perf_counter() - clock - record["load_s"]
    clock = time.perf_counter()
    if cuda:  # the load peak is kept in peak_allocated_load; from here on the peaks are the training steps'
        torch.cuda.reset_peak_memory_stats(device)

    live = LiveTensorProbe() if spec.run.live_tensor_probe else None
    probe = PhaseProbe(device, model, live)
    losses, times_ms = [], []
    step_peaks = StepPeaks(device) if cuda else None
    for step in range(train.steps):
        batch = windows.next().to(device)
        probed = step == train.warmup_steps - 1
        if probed and live is not None:
            live.register(model_tensors(model) + optimizer_state_tensors(optimizer) + [batch])
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * lr_factor(step)
        _sync(device)
        start = time.perf_counter()
        with live if probed and live is not None else nullcontext():
            loss = step_fn(model, optimizer, batch, probe.phase if probed else no_phase)
        _sync(device)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if cuda:
            step_peaks.end_step(probe.record if probed else {}, warmup=step < train.warmup_steps - 1)
        value = loss.float().item()
        losses.append(value)
        if not math.isfinite(value):
            record.update(train_loss=None, diverged_step=step)
            raise Diverged(f"loss is {value} at step {step}")
        if step >= train.warmup_steps:
            times_ms.append(elapsed_ms)
        print(f"step {step + 1}/{train.steps} loss {value:.4f} {elapsed_ms:.1f} ms", flush=True)
        if probed:
            record.update(probe.record)
            record["grads"] = probe.grads_peak
            record["optimizer_state"] = storage_bytes(optimizer_state_tensors(optimizer))
            if live is not None:
                record.update(cpu_live_peak=live.peak,
                              activations=record["live_end_forward"] - record["live_start_forward"],
                              activations_probe="live_tensors")
            elif cuda:
                record.update(activations=record["allocated_end_forward"] - record["allocated_start_forward"],
                              activations_probe="cuda_allocated")
    _sync(device)
    record["optimizer_state"] = storage_bytes(optimizer_state_tensors(optimizer))
    if cuda:
        step_peaks.record_into(record)
    tokens_per_step = train.batch_size * train.seq_len
    step_ms = float(np.median(times_ms))
    record.update(step_ms=step_ms, step_ms_p20=_percentile(times_ms, 20), step_ms_p80=_percentile(times_ms, 80),
                  timed_steps=len(times_ms), tokens_per_s=tokens_per_step * 1000 / step_ms,
                  train_loss_first=losses[0], train_loss=float(np.mean(losses[-min(5, len(losses)):])),
                  flops_per_token=flops_per_token(model, train.seq_len))
    peak_flops = record.get("gpu_peak_bf16_flops")
    if cuda and peak_flops and dtype in (torch.bfloat16, torch.float16):
        record["mfu"] = record["tokens_per_s"] * record["flops_per_token"] / peak_flops
    record["train_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    print(f"evaluating on {spec.train.eval_batches} batch(es)", flush=True)
    _evaluate(model, eval_tokens, spec, device, record)
    record["eval_s"] = time.perf_counter() - clock


@torch.no_grad()
def _evaluate(model, tokens, spec, device, record) -> None:
    batches = data_lib.eval_batches(tokens, spec.train.batch_size, spec.train.seq_len, spec.train.eval_batches)
    if not batches:
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    total = 0.0
    for batch in batches:
        batch = batch.to(device)
        total += model(input_ids=batch, labels=batch).loss.float().item()
    model.train()
    record.update(eval_loss=total / len(batches), eval_batches=len(batches),
                  eval_tokens=len(batches) * spec.train.batch_size * spec.train.seq_len)
    record["eval_ppl"] = math.exp(min(record["eval_loss"], 700.0))
    if device.type == "cuda":
        record["peak_allocated_eval"] = torch.cuda.max_memory_allocated(device)
