"""Shared fixtures for method tests: a few parameters, a fixed gradient sequence, a runner."""
import torch


def make_params(seed: int = 0, dtype=torch.float64) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 11)]  # odd shapes, a matrix, a vector
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def gradient_sequence(params, steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def run_optimizer(optimizer, params, grads_per_step) -> None:
    for grads in grads_per_step:
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        optimizer.step()
