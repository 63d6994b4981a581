"""Fidelity of a generate method against the full cache, on the same model, text and seed (teacher-forced).

The text: infer.fidelity_windows held-out windows of infer.fidelity_len tokens (x), decoded as one batch. The
reference is the model as loaded (before weight quantization) run over each whole window at once: exactly what a
full cache gives (tests/test_infer.py checks the two agree). The method's run prefills the first
infer.fidelity_prefill tokens into its cache, then feeds the true next token one step at a time (teacher forcing),
so every position t ≥ prefill is predicted through the cache as it stands after t tokens. Over those positions:
- fidelity_ppl = exp(mean −log p_method(x_t)) and fidelity_ppl_full the same for the reference: perplexity through
  the cache. For a sink or window cache with a window much shorter than fidelity_len this is the long-text
  perplexity of the StreamingLLM paper;
- fidelity_kl = mean KL(p_full ‖ p_method) of the next-token distributions, nats;
- fidelity_top1 = fraction of positions where both distributions' argmax agree.
"""
from __future__ import annotations

import math

import torch

from harness.infer import prompts
from methods.kv_cache import bind


def windows(held_out: torch.Tensor, infer) -> torch.Tensor:
    return prompts(held_out, infer.fidelity_windows, infer.fidelity_len)


@torch.no_grad()
def reference_log_probs(model, held_out: torch.Tensor, infer) -> torch.Tensor:
    """log p_full(· | x_<t) for t = prefill .. len − 1: (windows, len − prefill, vocab) fp32 on the model's device."""
    x = windows(held_out, infer).to(model.device)
    logits = model(input_ids=x, use_cache=False).logits[:, infer.fidelity_prefill - 1:-1]
    return logits.float().log_softmax(dim=-1)


@torch.no_grad()
def measure_fidelity(model, build_cache, held_out: torch.Tensor, infer, reference: torch.Tensor) -> dict:
    x = windows(held_out, infer).to(model.device)
    cache = build_cache(infer.fidelity_len)
    bind(model, cache)
    start = infer.fidelity_prefill
    logits = model(input_ids=x[:, :start], past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    nll = nll_full = kl = agree = 0.0
    for t in range(start, infer.fidelity_len):
        log_p = logits.float().log_softmax(dim=-1)
        ref = reference[:, t - start]
        target = x[:, t:t + 1]
        nll += -log_p.gather(1, target).sum().item()
        nll_full += -ref.gather(1, target).sum().item()
        kl += (ref.exp() * (ref - log_p)).sum().item()
        agree += (ref.argmax(dim=-1) == log_p.argmax(dim=-1)).sum().item()
        if t + 1 < infer.fidelity_len:
            logits = model(input_ids=target, past_key_values=cache, use_cache=True).logits[:, -1]
    bind(model, None)
    n = x.shape[0] * (infer.fidelity_len - start)
    return {"fidelity_ppl": math.exp(min(nll / n, 700.0)), "fidelity_ppl_full": math.exp(min(nll_full / n, 700.0)),
            "fidelity_kl": kl / n, "fidelity_top1": agree / n, "fidelity_tokens": n,
            "fidelity_len": infer.fidelity_len, "fidelity_prefill": start, "fidelity_windows": x.shape[0]}
