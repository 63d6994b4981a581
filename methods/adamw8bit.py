"""8-bit AdamW: AdamW (Loshchilov & Hutter, 2019) with both moments stored blockwise-quantized in 8 bits
(Dettmers et al., 2022; kernels/quant.py), block 256, dynamic-tree code books (signed for m, unsigned for v).

    m̃, ṽ = dequant(m_q), dequant(v_q)
    m = β1 m̃ + (1-β1) g,   v = β2 ṽ + (1-β2) g²,   θ ← θ(1 - lr λ) - lr (m / (1-β1^t)) / (√(v / (1-β2^t)) + ε)
    m_q, v_q = quant(m), quant(v)
State per parameter: 2 bytes of codes + 2 × 4 bytes of absmax per 256 values = 2.03 bytes (AdamW fp32: 8 bytes).
On CUDA the step is the fused Triton kernel kernels/adamw8bit.py (dequantize → update → quantize in registers,
one pass over the state); elsewhere the plain-torch path below, which materializes one fp32 copy of m and v of
the parameter being updated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from membench_kernels.quant import BLOCK, dequantize, dynamic_map, quantize
from methods.adamw import AdamHyperparameters
from methods.options import POWER_OF_TWO


@dataclass(frozen=True)
class Options(AdamHyperparameters):
    RANGES = {"block_size": POWER_OF_TWO}  # the Triton kernel's blocks

    block_size: int = BLOCK
    kernel: bool = True  # use the Triton kernel on CUDA


def init_state(p: torch.Tensor, block_size: int) -> dict:
    n_blocks = -(-p.numel() // block_size)
    zero_signed = int(torch.argmin(dynamic_map(True).abs()))
    return {"step": 0.0,  # a Python number: a CPU tensor increment per parameter per step costs launch-scale time
            "m_codes": torch.full(p.shape, zero_signed, dtype=torch.uint8, device=p.device),
            "m_absmax": torch.zeros(n_blocks, dtype=torch.float32, device=p.device),
            "v_codes": torch.zeros(p.shape, dtype=torch.uint8, device=p.device),
            "v_absmax": torch.zeros(n_blocks, dtype=torch.float32, device=p.device)}


def step_params(params: list[torch.Tensor], states: list[dict], group: dict, block_size: int,
                kernel: bool = True, kernel_options: dict | None = None) -> None:
    """One 8-bit AdamW update of each parameter from its .grad (also used by 8-bit GaLore for its full-rank
    parameters); on CUDA through the fused kernel, one launch for all of them (per dtype and step count)."""
    hyper = (group["lr"], *group["betas"], group["eps"], group["weight_decay"])
    fused, plain = [], []
    for p, state in zip(params, states, strict=True):
        if not state:
            state.update(init_state(p, block_size))
        state["step"] += 1
        (fused if kernel and p.is_cuda else plain).append((p, state))
    if fused:
        from membench_kernels.adamw8bit import adamw8bit_step_many

        adamw8bit_step_many([p for p, _ in fused], [p.grad for p, _ in fused], [s for _, s in fused], *hyper,
                            [s["step"] for _, s in fused], block=block_size, **(kernel_options or {}))
    for p, state in plain:
        _step_torch(p, p.grad, state, *hyper, state["step"], block_size)


def step_tensor(p, grad, state, lr, beta1, beta2, eps, weight_decay, step, block_size, kernel=True,
                kernel_options: dict | None = None) -> None:
    """One 8-bit AdamW update of tensor p in place from grad, with the 8-bit moments in `state`; kernel_options
    (rows, num_warps, nearest) is passed to the kernel's launch."""
    if kernel and p.is_cuda:
        from membench_kernels.adamw8bit import adamw8bit_step

        adamw8bit_step(p, grad, state, lr, beta1, beta2, eps, weight_decay, step, block=block_size,
                       **(kernel_options or {}))
    else:
        _step_torch(p, grad, state, lr, beta1, beta2, eps, weight_decay, step, block_size=block_size)


def _step_torch(p, grad, state, lr, beta1, beta2, eps, weight_decay, step, block_size):
    signed, unsigned = dynamic_map(True, p.device), dynamic_map(False, p.device)
    g = grad.float()
    m = dequantize(state["m_codes"], state["m_absmax"], signed, block_size)
    v = dequantize(state["v_codes"], state["v_absmax"], unsigned, block_size)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.sqrt().mul_((1 - beta2**step) ** -0.5).add_(eps)  # same operation order as the kernel
    theta = p.float().mul_(1 - lr * weight_decay).addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    p.copy_(theta)
    state["m_codes"], state["m_absmax"] = quantize(m, signed, block_size)
    state["v_codes"], state["v_absmax"] = quantize(v, unsigned, block_size)


class AdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, block_size=BLOCK,
                 kernel=True, kernel_options: dict | None = None):
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.block_size, self.kernel, self.kernel_options = block_size, kernel, kernel_options

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            step_params(with_grad, [self.state[p] for p in with_grad], group, self.block_size, self.kernel,
                        self.kernel_options)
        return loss


def build(named_params, options: Options, device: torch.device) -> torch.optim.Optimizer:
    return AdamW8bit([p for _, p in named_params], lr=options.lr, betas=options.betas, eps=options.eps,
                     weight_decay=options.weight_decay, block_size=options.block_size, kernel=options.kernel)
