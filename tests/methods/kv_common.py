"""A tiny LLaMA for the KV-cache method tests, and a greedy loop through a cache."""
import torch
import transformers


def tiny_llama(layers: int = 2, heads: int = 4, kv_heads: int | None = None, head_dim: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=heads * head_dim, intermediate_size=96, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads or heads, num_hidden_layers=layers,
                                      vocab_size=97, max_position_embeddings=1024, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config).eval()


def prompt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))
