"""Models built from configs (no downloads): LLaMA via transformers' LlamaForCausalLM, or any hub causal LM."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.schema import HubModelSpec, LlamaSpec


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(spec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Random-init model created directly on `device` in `dtype` (no fp32 copy on the host first)."""
    import transformers

    if isinstance(spec, LlamaSpec):
        config = transformers.LlamaConfig(
            hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
            num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_attention_heads,
            num_hidden_layers=spec.num_hidden_layers, vocab_size=spec.vocab_size,
            max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=1e-6, tie_word_embeddings=False,
            use_cache=False, attn_implementation="sdpa")
        with torch.device(device), _default_dtype(dtype):
            return transformers.LlamaForCausalLM(config)
    if isinstance(spec, HubModelSpec):
        if spec.pretrained:
            # built on the meta device and filled tensor by tensor on `device`: no host copy of the whole model
            return transformers.AutoModelForCausalLM.from_pretrained(
                spec.hub_name, dtype=dtype, device_map={"": device}, use_cache=False)
        config = transformers.AutoConfig.from_pretrained(spec.hub_name)
        config.use_cache = False
        with torch.device(device), _default_dtype(dtype):
            return transformers.AutoModelForCausalLM.from_config(config)
    raise TypeError(f"no builder for {type(spec).__name__}")


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Model FLOPs per trained token (Kaplan et al. / PaLM appendix B): 6·N_matmul + 12·L·d·S for attention.
    Recomputation (checkpointing) is not counted: MFU compares useful work."""
    embedding = model.get_input_embeddings().weight.numel()
    # quantized layers keep their weights as buffers: count the matrices by their modules' shapes
    n_matmul = sum(m.shape.numel() for m in model.modules() if isinstance(getattr(m, "shape", None), torch.Size))
    n_matmul += sum(p.numel() for p in model.parameters() if p.dim() >= 2) - embedding
    cfg = model.config
    return 6.0 * n_matmul + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
