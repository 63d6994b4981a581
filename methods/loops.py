"""Training-step variants. A step gets the model, optimizer, batch and the probes' `phase` context manager,
and returns the detached loss; the probes measure memory per phase (forward, backward, optimizer)."""
from __future__ import annotations

import torch


def standard_step(model, optimizer, batch: torch.Tensor, phase) -> torch.Tensor:
    """forward → backward → optimizer.step → zero_grad(set_to_none) — the usual loop."""
    with phase("forward"):
        loss = model(input_ids=batch, labels=batch).loss
    with phase("backward"):
        loss.backward()
    with phase("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()
