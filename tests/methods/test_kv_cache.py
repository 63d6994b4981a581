"""The full cache (the generate baseline) against recomputation without a cache, and prompts prefilled in
micro-batches against one forward."""
import torch

from harness.infer import decode, prefill
from methods import kv_cache
from tests.methods.kv_common import prompt, tiny_llama


def test_full_cache_decodes_as_recomputation_without_a_cache():
    """Greedy decoding through DynamicCache picks the tokens that re-running the whole sequence picks, and its logits
    agree to fp32 rounding (different matmul shapes, so not bitwise)."""
    model, ids = tiny_llama(), prompt(2, 40)
    with torch.no_grad():
        cache = kv_cache.build(model, kv_cache.Options(), 60)
        tokens = [model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)]
        for _ in range(12):
            step = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True).logits[:, -1]
            sequence = torch.cat([ids, *tokens], dim=1)
            full = model(input_ids=sequence, use_cache=False).logits[:, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
            assert torch.equal(step.argmax(-1), full.argmax(-1))
            tokens.append(step.argmax(-1, keepdim=True))


def test_prompts_prefilled_in_micro_batches_give_the_cache_of_one_forward():
    model, ids = tiny_llama(), prompt(5, 33)
    with torch.no_grad():
        whole, first = prefill(model, lambda: kv_cache.build(model, kv_cache.Options(), 40), ids, None)
        parts, first_parts = prefill(model, lambda: kv_cache.build(model, kv_cache.Options(), 40), ids, 2)
    assert torch.equal(first, first_parts)
    for a, b in zip(whole.layers, parts.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a.values, b.values, atol=1e-6, rtol=1e-6)
    assert len(decode(model, parts, first_parts, 3, torch.device("cpu"))) == 3
    kv_cache.bind(model, None)
