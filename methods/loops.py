"""Training-step variants. A step gets the model, optimizer, batch and the probes' `phase` context manager,
and returns the detached loss; the probes measure memory per phase (forward, backward, optimizer)."""
from __future__ import annotations

import functools

import torch
from torch.utils._python_dispatch import _disable_current_modes


def causal_lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, labels=batch).loss


def standard_step(model, optimizer, batch: torch.Tensor, phase) -> torch.Tensor:
    """forward → backward → optimizer.step → zero_grad(set_to_none) — the usual loop."""
    with phase("forward"):
        loss = causal_lm_loss(model, batch)
    with phase("backward"):
        loss.backward()
    with phase("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def layerwise_step(model, optimizer, batch: torch.Tensor, phase) -> torch.Tensor:
    """Layer-wise weight update (GaLore §4.3; LOMO, Lv et al., 2023): the optimizer of each parameter steps in the
    parameter's post-accumulate-grad hook during backward and frees its gradient there, so at most one
    parameter's gradient is alive at a time. Needs a LayerwiseOptimizer (built when method.loop=layerwise)."""
    with phase("forward"):
        loss = causal_lm_loss(model, batch)
    with phase("backward"):
        loss.backward()
    with phase("optimizer"):
        optimizer.step()  # nothing left: every parameter was updated during backward
    return loss.detach()


def zeroth_order_step(model, optimizer, batch: torch.Tensor, phase) -> torch.Tensor:
    """Zeroth-order step (MeZO): the optimizer evaluates the loss twice under perturbations; no backward pass."""
    with phase("forward"):
        with torch.no_grad():
            loss = optimizer.step(lambda: causal_lm_loss(model, batch))
    return loss.detach()


class LayerwiseOptimizer:
    """One optimizer per parameter, stepped in that parameter's post-accumulate-grad hook, gradient freed after.
    Exposes `param_groups` (the inner groups, so a learning-rate schedule reaches them) and `state`."""

    def __init__(self, build_one, named_params):
        self.optimizers = {}
        for name, p in named_params:
            self.optimizers[p] = build_one([(name, p)])
            p.register_post_accumulate_grad_hook(self._make_hook(self.optimizers[p]))

    @staticmethod
    def _make_hook(optimizer):
        def hook(param: torch.Tensor) -> None:
            optimizer.step()
            param.grad = None

        return hook

    def attach_quantized(self, model: torch.nn.Module) -> None:
        """INT8 layers hold no parameters to hook: their rule already runs inside their own backward. One inner
        optimizer carries their group and state (ProjectedAdamW.attach_quantized)."""
        next(iter(self.optimizers.values())).attach_quantized(model)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def step(self, closure=None):
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


def hide_step_from_dispatch_modes(optimizer) -> None:
    """Run optimizer.step with Python dispatch modes switched off. For optimizers whose step is torch.compile'd
    with fullgraph=True (torchao's), which refuse to trace under a mode such as the live-tensor probe: the probe then
    sees no temporaries of the step (optimizer_state is still counted from the state tensors)."""
    step = optimizer.step

    @functools.wraps(step)
    def plain_step(*args, **kwargs):
        with _disable_current_modes():
            return step(*args, **kwargs)

    optimizer.step = plain_step
