"""One rank of a job (train.distributed, run.nproc ranks started by torchrun; harness/ranks.py merges their results).

Strategies (STRATEGIES), all on torch.distributed (NCCL on GPUs, gloo on CPU):
- ddp: DistributedDataParallel: every rank holds the whole model, gradients and optimizer state; gradients are
  all-reduced (averaged) in buckets during backward.
- zero1: DDP for the gradients, optimizer state sharded by torch's ZeroRedundancyOptimizer (ZeRO stage 1,
  Rajbhandari et al., 2020): each rank steps the parameters of its partition and broadcasts them.
- fsdp2_zero2: FSDP2 (`fully_shard`, each decoder layer then the root) with reshard_after_forward=False: parameters,
  gradients and state are sharded, parameters stay gathered from forward to backward (ZeRO-2-like, no second
  all-gather in backward).
- fsdp2: FSDP2 with reshard_after_forward=True (ZeRO-3): parameters are gathered for each layer's forward and again
  for its backward.

The data: each step draws world × grad_accum × batch_size windows from the seeded stream and rank r takes its slice,
so a job of W ranks sees exactly the samples of one rank with W times the batch (what the compatibility matrix
compares against). Gradient accumulation (train.grad_accum = k micro-batches): each micro-batch's loss is divided by
k, so the summed gradient is the gradient of the mean loss over the k × batch_size windows, as one big batch gives;
the ranks' gradient reduction is switched off for all but the last micro-batch.
"""
from __future__ import annotations

import os
import types
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from harness import data as data_lib
from methods.loops import causal_lm_loss


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment contract; (0, 1, 0) outside one."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def init(spec, device: torch.device) -> None:
    """Join the job's process group (a no-op for train.distributed=none or where one exists already)."""
    if spec.train.distributed != "none" and not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _ddp(model, device):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fsdp2(reshard_after_forward: bool):
    def wrap(model, device):
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())  # transformers' decoder-layer classes
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=reshard_after_forward)
        fully_shard(model, reshard_after_forward=reshard_after_forward)
        return model

    return wrap


# strategy -> (wrap(model, device) -> the module the training step calls, shards the optimizer state by ZeRO-1)
STRATEGIES = {
    "none": (lambda model, device: model, False),
    "ddp": (_ddp, False),
    "zero1": (_ddp, True),
    "fsdp2_zero2": (_fsdp2(reshard_after_forward=False), False),
    "fsdp2": (_fsdp2(reshard_after_forward=True), False),
}


def wrap_model(spec, model, device):
    """The module the training step calls: `model` itself (none, FSDP2, which shards it in place) or a DDP wrapper
    around it; `model` stays the module whose tensors are counted and evaluated."""
    return STRATEGIES[spec.train.distributed][0](model, device)


class _Zero1(ZeroRedundancyOptimizer):
    """ZeroRedundancyOptimizer whose `state` is this rank's shard (the local optimizer's), for the state probe, and
    whose local optimizer may build several parameter groups (GaLore's projected and plain ones) from the one group
    it is given: the schedule's lr, set on the one exposed group, reaches each local group in proportion to its own
    base lr (ZeRO itself copies group by group, and needs as many on both sides)."""

    @property
    def state(self):
        return self.optim.state if getattr(self, "initialized", False) else self._state

    @state.setter
    def state(self, value):
        self._state = value

    def _sync_param_groups(self, src, dst) -> None:
        if len(src) == len(dst):
            ZeroRedundancyOptimizer._sync_param_groups(src, dst)
        elif dst is self.optim.param_groups:  # exposed -> local, before each step
            scale = src[0]["lr"] / self._exposed_lr
            for group, base in zip(dst, self._local_lrs, strict=True):
                group["lr"] = base * scale


def build_optimizer(spec, model, device, build):
    """`build(method, model, device)` (harness.parts.build_optimizer), or under zero1 the same method's optimizer
    over this rank's partition of the trainable parameters inside a ZeroRedundancyOptimizer."""
    if not STRATEGIES[spec.train.distributed][1]:
        return build(spec.method, model, device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = {p: n for n, p in named}

    def local_optimizer(groups, **_):
        subset = [(names[p], p) for group in groups for p in group["params"]]
        return build(spec.method, types.SimpleNamespace(named_parameters=lambda: subset), device)

    zero = _Zero1([p for _, p in named], optimizer_class=local_optimizer)
    zero._local_lrs = [group["lr"] for group in zero.optim.param_groups]
    zero._exposed_lr = zero.param_groups[0]["lr"] = zero._local_lrs[0]  # the schedule scales this one
    return zero


class RankBatches:
    """This rank's micro-batches of each step (see the module's docstring)."""

    def __init__(self, tokens, spec):
        train = spec.train
        self.rank, world_size = world()
        self.per_rank = train.batch_size * train.grad_accum
        self.windows = data_lib.RandomWindows(tokens, self.per_rank * world_size, train.seq_len, train.seed)
        self.micro = train.batch_size

    def next(self, device) -> list[torch.Tensor]:
        mine = self.windows.next()[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].to(device)
        return list(mine.split(self.micro))


@contextmanager
def _no_reduction(module):
    """Gradients accumulate locally, without the ranks' reduction (DDP's no_sync, FSDP2's gradient sync off)."""
    if hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def step_function(spec, loop):
    """The training step over a list of micro-batches: the method's loop for one, else the accumulated standard step
    (planning allows grad_accum > 1 with method.loop=standard only; harness/ranks.py says why)."""
    if spec.train.grad_accum == 1:
        return lambda model, optimizer, batches, phase: loop(model, optimizer, batches[0], phase)
    return accumulated_step


def accumulated_step(model, optimizer, batches: list[torch.Tensor], phase) -> torch.Tensor:
    """forward → backward of loss / k for each of k micro-batches (reduction across ranks on the last only) →
    optimizer.step → zero_grad; returns the mean loss."""
    losses = []
    for i, batch in enumerate(batches):
        with _no_reduction(model) if i < len(batches) - 1 else nullcontext():
            with phase("forward"):
                loss = causal_lm_loss(model, batch) / len(batches)
            with phase("backward"):
                loss.backward()
        losses.append(loss.detach())
    with phase("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses).sum()
