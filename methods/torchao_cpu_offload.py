"""Reference: torchao's CPUOffloadOptimizer (torchao.optim) around torch.optim.AdamW, with offload_gradients=True,
run as a method to compare with our cpu_offload_adamw (methods/cpu_offload_adamw.py). torchao keeps parameters of
fewer than 4096 elements, and their AdamW, on the device. Needs torchao and CUDA; otherwise the row is `skipped`.
"""
from __future__ import annotations

import time

import torch

from methods.adamw import AdamHyperparameters as Options  # noqa: F401  (the options of AdamW)
from methods.cpu_offload_adamw import host_fields

REQUIRES_CUDA = True  # torchao's CPUOffloadOptimizer asserts a CUDA (or XPU) device


class TorchaoOffload:
    """torchao's optimizer (which has no `state`) with the device state, host state and step time counted."""

    def __init__(self, inner):
        self.inner, self.step_ms = inner, []

    def step(self, closure=None):
        start = time.perf_counter()
        self.inner.step()
        self.step_ms.append((time.perf_counter() - start) * 1000)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=True)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self) -> dict:
        """The state on the device: that of the small parameters torchao keeps there."""
        return self.inner.d_opt.state if self.inner.d_opt is not None else {}

    def row_fields(self) -> dict:
        states = [s for opt in self.inner.optim_dict.values() for s in opt.state.values()]
        return host_fields(states, self.step_ms)


def build(named_params, options, device: torch.device) -> TorchaoOffload:
    from methods import require

    optim = require("torchao.optim", "method torchao_cpu_offload_adamw")
    return TorchaoOffload(optim.CPUOffloadOptimizer(
        [p for _, p in named_params], torch.optim.AdamW, offload_gradients=True, lr=options.lr,
        betas=tuple(options.betas), eps=options.eps, weight_decay=options.weight_decay))
