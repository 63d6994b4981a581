"""The training job: build → warm up → one probed step → timed steps → held-out eval. Fills `record` as it goes,
so a job that fails half-way still reports what it measured up to the failure.

Timing: warm-up steps are excluded; every step is bracketed by a device synchronize; step_ms is the median of the
timed steps, with p20/p80. The probed step is the last warm-up step (optimizer state already exists) and is
not timed: per-phase synchronizes and the live-tensor probe slow it down.

Held-out eval: a memory run evaluates train.eval_batches batches once, at the end. A quality run (quality.measure)
evaluates the whole held-out split (quality.eval_tokens at most; harness.data.split_windows) before the first step,
every quality.eval_every steps and at the end: `eval_curve`, then a verdict (harness/verdict.py). Evals stay out of
the step timings and step peaks (their time is eval_s, their peak peak_allocated_eval); cached blocks they leave in
the allocator may still count in a later step's reserved peak. Curves are [[step, loss], ...], step = optimizer
updates applied to the weights the loss was measured on (0: the initialization).
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

from harness import PROJECT_ROOT, autobatch, checkpoints, distributed
from harness import data as data_lib
from harness.estimate import job_estimate
from harness.loading import load_model
from harness.models import flops_per_token
from harness.parts import build_optimizer, loop_step, row_fields
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
from harness.verdict import job_verdict, training_verdict

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_CURVE_POINTS = 200  # the training curve keeps every ceil(steps / this)-th step, so a row stays small


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


class Hooks:
    """What a scenario adds to the training job (harness/finetune.py): its tokens, and what it measures before the
    first step and after the final eval. Pretraining adds nothing."""

    def tokens(self, spec: JobSpec, cache) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return data_lib.load_tokens(spec.dataset, spec.model.vocab_size, cache)

    def start(self, model, record: dict) -> None:
        pass

    def end(self, model, record: dict) -> None:
        pass


def run_training(spec: JobSpec, device: torch.device, record: dict, inject_fault=lambda stage, model: None,
                 hooks: Hooks | None = None) -> None:
    if spec.train.batch_size == "auto":  # trials in child processes, before this process touches CUDA
        spec = autobatch.resolve(spec, record, device.type)
    if spec.run.estimate:
        record.update(job_estimate(spec, device.type))  # the memory estimate (harness/estimate.py), no GPU used
    cuda = device.type == "cuda"
    dtype = resolve_dtype(spec.train.dtype, device)
    seed = spec.train.seed
    record.update(dtype=str(dtype).removeprefix("torch."), seed=seed, seed_torch=seed, seed_numpy=seed,
                  seed_python=seed, data_order_seed=seed)
    seed_everything(spec.train.seed)
    nvml = NvmlSampler(device.index or 0, spec.run.nvml_interval_ms / 1000).start() if cuda else None
    try:
        _train_and_eval(spec, device, dtype, record, inject_fault, hooks or Hooks())
    finally:
        if nvml is not None:
            record.update(nvml.stop())
        if cuda:
            record["peak_reserved"] = max(record.get("peak_reserved") or 0, torch.cuda.max_memory_reserved(device))


def _train_and_eval(spec, device, dtype, record, inject_fault, hooks) -> None:
    cuda, train = device.type == "cuda", spec.train
    clock = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)  # creates the CUDA context (reading the allocator's counters does not)
        torch.cuda.reset_peak_memory_stats(device)
        record["allocated_baseline"] = torch.cuda.memory_allocated(device)
        record["cuda_init_s"] = time.perf_counter() - clock
    model = load_model(spec, dtype, device)
    model.train()
    step_model = distributed.wrap_model(spec, model, device)  # DDP's wrapper; FSDP2 shards `model` in place
    rank, world = distributed.world()
    record.update(n_params=sum(p.numel() for p in model.parameters()), weights=storage_bytes(model_tensors(model)),
                  rank=rank, world_size=world)
    if cuda:
        _sync(device)
        record["peak_allocated_load"] = torch.cuda.max_memory_allocated(device)
    record["load_s"] = time.perf_counter() - clock
    print(f"loaded {record['n_params']:,} parameters in {record['load_s']:.1f} s", flush=True)  # progress in log.txt
    results_dir = Path(os.path.expanduser(spec.run.results_dir))
    train_tokens, eval_tokens, info = hooks.tokens(spec, cache_dir(results_dir if results_dir.is_absolute()
                                                                   else PROJECT_ROOT / results_dir))
    budget_tokens = train.steps * train.batch_size * train.grad_accum * world * train.seq_len
    record.update(info, train_corpus_tokens=len(train_tokens), eval_corpus_tokens=len(eval_tokens),
                  quality_measured=spec.quality.measure, budget_steps=train.steps, budget_tokens=budget_tokens,
                  budget_epochs=budget_tokens / len(train_tokens), verdict=None, verdict_reason=None)
    held_out = _HeldOut(model, eval_tokens, spec, device)
    feed = distributed.RankBatches(train_tokens, spec)
    optimizer = distributed.build_optimizer(spec, model, device, build_optimizer)
    record["n_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)  # after LoRA / LISA
    lr_factor = _lr_factor(spec)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step_fn = distributed.step_function(spec, loop_step(spec.method))
    inject_fault("after_load", model)
    record["data_s"] = time.perf_counter() - clock - record["load_s"]
    if spec.quality.measure:
        print(f"evaluating on {len(held_out.batches)} batch(es) before the first step", flush=True)
        record["initial_eval_loss"] = held_out.loss(0)
        record["eval_curve"] = held_out.curve
        hooks.start(model, record)
    clock, eval_s_before = time.perf_counter(), held_out.seconds
    if cuda:  # the load peak is kept in peak_allocated_load; from here on the peaks are the training steps'
        torch.cuda.reset_peak_memory_stats(device)

    live = LiveTensorProbe(device.type) if spec.run.live_tensor_probe else None
    probe = PhaseProbe(device, model, live)
    losses, times_ms = [], []
    stride, record["train_curve"] = math.ceil(train.steps / TRAIN_CURVE_POINTS), []
    every = spec.quality.eval_every if spec.quality.measure else 0
    step_peaks = StepPeaks(device) if cuda else None
    for step in range(train.steps):
        batches = feed.next(device)
        probed = step == train.warmup_steps - 1
        if probed and live is not None:
            live.register(model_tensors(model) + optimizer_state_tensors(optimizer) + batches)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * lr_factor(step)
        _sync(device)
        start = time.perf_counter()
        with live if probed and live is not None else nullcontext():
            loss = step_fn(step_model, optimizer, batches, probe.phase if probed else no_phase)
        _sync(device)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if cuda:
            step_peaks.end_step(probe.record if probed else {}, warmup=step < train.warmup_steps - 1)
        value = loss.float().item()
        losses.append(value)
        if step % stride == 0 or step == train.steps - 1 or not math.isfinite(value):
            record["train_curve"].append([step, value])
        if not math.isfinite(value):
            record.update(train_loss=None, diverged_step=step)
            if spec.quality.measure:
                record["verdict"], record["verdict_reason"] = job_verdict(
                    record["initial_eval_loss"], held_out.curve, record["train_curve"], None)
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
        if every and (step + 1) % every == 0 and step + 1 < train.steps:
            held_out.loss(step + 1)
    _sync(device)
    record["optimizer_state"] = storage_bytes(optimizer_state_tensors(optimizer))
    record.update(row_fields(model, optimizer))  # bytes a part keeps off the device (offloading), its host step time
    if cuda:
        step_peaks.record_into(record)
    tokens_per_step = train.batch_size * train.grad_accum * world * train.seq_len  # the whole job's
    step_ms = float(np.median(times_ms))
    record.update(step_ms=step_ms, step_ms_p20=_percentile(times_ms, 20), step_ms_p80=_percentile(times_ms, 80),
                  timed_steps=len(times_ms), tokens_per_s=tokens_per_step * 1000 / step_ms,
                  train_loss_first=losses[0], train_loss=float(np.mean(losses[-min(5, len(losses)):])),
                  flops_per_token=flops_per_token(model, train.seq_len))
    peak_flops = record.get("gpu_peak_bf16_flops")
    if cuda and peak_flops and dtype in (torch.bfloat16, torch.float16):
        record["mfu"] = record["tokens_per_s"] * record["flops_per_token"] / (peak_flops * world)
    record["train_s"] = time.perf_counter() - clock - (held_out.seconds - eval_s_before)  # evals are eval_s
    _final_eval(held_out, spec, record)
    if not spec.quality.measure:
        record["verdict"], record["verdict_reason"] = training_verdict(record["train_curve"])
    hooks.end(model, record)
    if record.get("checkpoint_path"):
        print(f"saving the model to {record['checkpoint_path']}", flush=True)
        record["checkpoint_bytes"] = checkpoints.save(model, Path(record["checkpoint_path"]))


def _final_eval(held_out, spec, record) -> None:
    if not held_out.batches:
        record["eval_s"] = held_out.seconds
        return
    print(f"evaluating on {len(held_out.batches)} batch(es)", flush=True)
    record["eval_loss"] = held_out.loss(spec.train.steps)
    record.update(eval_batches=len(held_out.batches), eval_tokens=held_out.tokens, eval_s=held_out.seconds,
                  eval_ppl=math.exp(min(record["eval_loss"], 700.0)))
    if held_out.peak is not None:
        record["peak_allocated_eval"] = held_out.peak
    if spec.quality.measure:
        record["verdict"], record["verdict_reason"] = job_verdict(
            record["initial_eval_loss"], held_out.curve, record["train_curve"], record["eval_loss"])


class _HeldOut:
    """The held-out batches (a quality run's whole split, else train.eval_batches batches) and the evals run on
    them: their curve, their time and their allocated peak, all kept apart from the training steps' figures."""

    def __init__(self, model, tokens: torch.Tensor, spec: JobSpec, device: torch.device):
        train = spec.train
        if spec.quality.measure:
            self.batches = data_lib.split_windows(tokens, train.batch_size, train.seq_len, spec.quality.eval_tokens)
            if not self.batches:  # planning checks text files; a hub dataset's split is first seen here
                raise ValueError(f"the held-out split has {len(tokens)} tokens, fewer than one window of "
                                 f"train.seq_len={train.seq_len}")
        else:
            self.batches = data_lib.eval_batches(tokens, train.batch_size, train.seq_len, train.eval_batches)
        self.tokens = sum(b.numel() for b in self.batches)
        self.model, self.device, self.curve, self.seconds = model, device, [], 0.0
        self.peak = None

    @torch.no_grad()
    def loss(self, step: int) -> float:
        """Mean loss per predicted token over the batches (each window predicts seq_len - 1 tokens, so a batch's mean
        weighs by its windows), appended to the curve at `step`."""
        clock, cuda = time.perf_counter(), self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.eval()
        total = 0.0
        for batch in self.batches:
            batch = batch.to(self.device)
            total += self.model(input_ids=batch, labels=batch).loss.float().item() * len(batch)
        self.model.train()
        value = total / sum(len(b) for b in self.batches)
        if cuda:
            self.peak = max(self.peak or 0, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)  # the next training step's peak starts from here
        self.curve.append([step, value])
        self.seconds += time.perf_counter() - clock
        return value
