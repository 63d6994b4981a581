"""Fused linear cross-entropy: loss = CE(h Wᵀ, y) and its gradients dH, dW without materializing the N × V logits.

Tokens are processed in chunks of C rows. For each chunk: z = h_c Wᵀ (C × V, one matmul), then one Triton program
per row computes, in two sweeps over the vocabulary in fp32, the log-sum-exp (online max / sum), the row loss
    ℓ = lse − (1 − ε) z_y − ε · mean(z)            (ε = label smoothing; rows with y = ignore_index give 0)
and overwrites z in place with the logit gradient  dz = (softmax(z) − (1 − ε) onehot(y) − ε / V) / n_valid.
Then dH_c = dz W and dW += dzᵀ h_c (two matmuls). The gradients are produced during the forward pass and scaled
by the incoming gradient in backward (the loss is a terminal node). Matmuls: 3 · N · V · D multiply-adds, like
the unfused graph; memory beyond the two gradients: one C × V chunk of fp32 logits.

The chunk size is the knob between the two operating points (kernels/bench_fused_linear_ce.py):
memory mode, chunk bytes ≤ 2 % of (N + V) · D · 2; speed mode, ≤ 30 %.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _ce_rows_kernel(z_ptr, z_stride, y_ptr, loss_ptr, V, ignore_index, smoothing, grad_scale,
                    BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    y = tl.load(y_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    running_max = -float("inf")
    running_sum = 0.0
    logit_sum = 0.0
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        z = tl.load(z_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        block_max = tl.max(z, axis=0)
        new_max = tl.maximum(running_max, block_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
        logit_sum += tl.sum(tl.where(mask, z, 0.0), axis=0)
    lse = running_max + tl.log(running_sum)
    valid = y != ignore_index
    safe_y = tl.where(valid, y, 0)
    z_y = tl.load(z_row + safe_y).to(tl.float32)
    loss = lse - (1.0 - smoothing) * z_y - smoothing * logit_sum / V
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
    if WRITE_GRAD:
        scale = tl.where(valid, grad_scale, 0.0)
        for start in range(0, V, BLOCK_V):
            mask = start + cols < V
            z = tl.load(z_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(z - lse) - smoothing / V - tl.where(start + cols == safe_y, 1.0 - smoothing, 0.0)
            tl.store(z_row + start + cols, (grad * scale).to(z_ptr.dtype.element_ty), mask=mask)


def _ce_rows_torch(z, targets, ignore_index, smoothing, grad_scale, write_grad):
    """The same per-row computation in plain torch, for CPU jobs (Triton needs a GPU or its interpreter)."""
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    lse = torch.logsumexp(z, dim=1)
    losses = lse - (1 - smoothing) * z.gather(1, safe[:, None])[:, 0] - smoothing * z.mean(dim=1)
    losses = torch.where(valid, losses, 0.0)
    if write_grad:
        z.sub_(lse[:, None]).exp_().sub_(smoothing / z.shape[1])
        z.scatter_add_(1, safe[:, None], torch.full_like(z[:, :1], -(1 - smoothing)))
        z.mul_(torch.where(valid, grad_scale, 0.0)[:, None])
    return losses


def ce_rows(z: torch.Tensor, targets: torch.Tensor, ignore_index: int, smoothing: float, grad_scale: float,
            write_grad: bool) -> torch.Tensor:
    """Per-row loss of logits z (rows × V); with write_grad, z is overwritten by grad_scale · dloss/dz."""
    if not z.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return _ce_rows_torch(z, targets, ignore_index, smoothing, grad_scale, write_grad)
    rows, vocab = z.shape
    losses = torch.empty(rows, dtype=z.dtype, device=z.device)
    if rows:
        _ce_rows_kernel[(rows,)](z, z.stride(0), targets, losses, vocab, ignore_index, smoothing, grad_scale,
                                 BLOCK_V=min(4096, triton.next_power_of_2(vocab)), WRITE_GRAD=write_grad)
    return losses


def chunk_rows(n_tokens: int, vocab: int, hidden: int, budget_fraction: float) -> int:
    """Rows per chunk so that the fp32 logits chunk stays within budget_fraction of the gradient bytes."""
    bound = (n_tokens + vocab) * hidden * 2
    return max(1, min(n_tokens, int(budget_fraction * bound) // (vocab * 4)))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, smoothing, chunk):
        n_tokens = hidden.shape[0]
        n_valid = int((targets != ignore_index).sum())
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight) if need_grad else None
        accumulate = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        for start in range(0, n_tokens, chunk):
            h = hidden[start:start + chunk]
            z = (h @ weight.T).to(accumulate)
            losses = ce_rows(z, targets[start:start + chunk], ignore_index, smoothing, 1.0 / max(n_valid, 1),
                             write_grad=need_grad)
            total += losses.sum()
            if need_grad:
                dz = z.to(hidden.dtype)  # in place when hidden is fp32; one C × V copy in bf16
                del z  # the fp32 chunk goes before the two matmuls
                torch.matmul(dz, weight, out=grad_hidden[start:start + chunk])
                grad_weight.addmm_(dz.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / max(n_valid, 1)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
            grad_weight.mul_(grad_loss.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -100, label_smoothing: float = 0.0,
                               chunk_rows_: int | None = None, budget_fraction: float = 0.02) -> torch.Tensor:
    """Mean cross-entropy of hidden (N × D) @ weight (V × D)ᵀ against targets (N), over targets ≠ ignore_index."""
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    targets = targets.reshape(-1).contiguous()
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    chunk = chunk_rows_ or chunk_rows(hidden.shape[0], weight.shape[0], weight.shape[1], budget_fraction)
    return _FusedLinearCE.apply(hidden, weight, targets, ignore_index, label_smoothing, chunk)
