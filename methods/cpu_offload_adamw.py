"""Optimizer-state offloading on one GPU, as ZeRO-Offload (Ren et al., "ZeRO-Offload: Democratizing Billion-Scale
Model Training", USENIX ATC 2021) runs it without partitioning, and as torchao's CPUOffloadOptimizer does:

    backward: each parameter's gradient, once accumulated, is copied D2H (side stream, non-blocking) into a pinned
              host buffer and its device memory freed (post-accumulate-grad hook, so the copies overlap the backward)
    step:     AdamW on the host copy of each parameter (m, v and the step live in host memory only; torch's fused
              CPU AdamW), then the updated parameter is copied H2D; the next forward starts once all copies are in.
The rule is AdamW's (methods/adamw.py) in the parameters' dtype; the device keeps the weights and no gradient or
optimizer state past the backward. The cost is PCIe traffic (gradients down, parameters up: 2 × the weights' bytes a
step) plus the CPU's step time, which the GPU waits for: the row's `optimizer_host_ms` is the median time of the step
(CPU AdamW + the copies not hidden), `optimizer_state_host` the host bytes of the states (B), while
`optimizer_state` counts the state on the device: none. A job on the CPU is `skipped` (host and device are one
memory there); the optimizer still runs there, without pinned memory or streams, for the tests.
"""
from __future__ import annotations

import time

import torch

from methods.adamw import AdamHyperparameters as Options  # noqa: F401  (the options of AdamW)

REQUIRES_CUDA = True


class CPUOffloadAdamW:
    """One host AdamW per parameter, so the H2D copy of one parameter overlaps the CPU step of the next."""

    def __init__(self, named_params, options, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.host: dict[torch.Tensor, torch.Tensor] = {}
        self.optimizers: dict[torch.Tensor, torch.optim.AdamW] = {}
        self.pending: dict[torch.Tensor, object] = {}  # parameters whose gradient was sent, in backward order
        self.step_ms: list[float] = []
        for _, p in named_params:
            host = torch.empty_like(p, device="cpu", pin_memory=self.cuda)
            host.copy_(p.detach())
            host.grad = torch.empty_like(host, pin_memory=self.cuda)
            self.host[p] = host
            self.optimizers[p] = torch.optim.AdamW([host], lr=options.lr, betas=tuple(options.betas),
                                                   eps=options.eps, weight_decay=options.weight_decay, fused=True)
            p.register_post_accumulate_grad_hook(self._send_gradient)

    def _send_gradient(self, p: torch.Tensor) -> None:
        host = self.host[p]
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the gradient is written on the main one
            with torch.cuda.stream(self.stream):
                host.grad.copy_(p.grad, non_blocking=True)
            p.grad.record_stream(self.stream)  # its block is not reused before the copy has read it
            self.pending[p] = self.stream.record_event()
        else:
            host.grad.copy_(p.grad)
            self.pending[p] = None
        p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        start = time.perf_counter()
        if self.cuda:  # no parameter is overwritten while the backward may still read it
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        for p, sent in self.pending.items():
            if sent is not None:
                sent.synchronize()
            self.optimizers[p].step()
            if self.cuda:
                with torch.cuda.stream(self.stream):
                    p.copy_(self.host[p], non_blocking=True)
            else:
                p.copy_(self.host[p])
        if self.cuda:
            self.stream.synchronize()
        self.pending.clear()
        self.step_ms.append((time.perf_counter() - start) * 1000)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.host:
            p.grad = None  # already None after the backward; the host buffers are overwritten by the next one

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        """The optimizer state held on the device: none (what memory probes count as optimizer_state)."""
        return {}

    def host_state(self) -> dict:
        return {p: opt.state[self.host[p]] for p, opt in self.optimizers.items()}

    def row_fields(self) -> dict:
        return host_fields(self.host_state().values(), self.step_ms)


def host_fields(states, step_ms: list[float]) -> dict:
    """optimizer_state_host: bytes of the host states; optimizer_host_ms: median time of a step after the first
    (which also allocates the states)."""
    tensors = [t for state in states for t in state.values() if isinstance(t, torch.Tensor)]
    timed = sorted(step_ms[1:] or step_ms)
    return {"optimizer_state_host": sum(t.untyped_storage().nbytes() for t in tensors),
            "optimizer_host_ms": timed[len(timed) // 2] if timed else None}


def build(named_params, options, device: torch.device) -> CPUOffloadAdamW:
    return CPUOffloadAdamW(named_params, options, device)
