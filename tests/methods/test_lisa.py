"""LISA: γ sampled layers (plus embeddings, norm, head) train; the rest are frozen with no Adam state; resampled
every K steps from a seeded generator."""
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import lisa

SPEC = LlamaSpec(name="t", family="llama", hidden_size=16, intermediate_size=40, num_attention_heads=2,
                 num_hidden_layers=6, vocab_size=50, max_position_embeddings=32)


def test_lisa_trains_only_sampled_layers_and_resamples():
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float32, torch.device("cpu"))
    opt = lisa.build(list(model.named_parameters()), parse(lisa.Options, {"active_layers": 2, "interval": 3}, "m"),
                     torch.device("cpu"))
    batch = torch.randint(0, 50, (2, 8))
    history = []
    for _ in range(9):
        active = list(opt.active)
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        layers_with_state = {int(n.split(".")[2]) for n, p in model.named_parameters()
                             if ".layers." in n and p in opt.state}
        assert len(active) == 2 and layers_with_state <= set(active) | set(history[-1] if history else [])
        history.append(active)
    assert history[0] == history[1] == history[2] and len({tuple(h) for h in history}) > 1
    always = [p for n, p in model.named_parameters() if ".layers." not in n]
    assert all(p.requires_grad for p in always) and all(p in opt.state for p in always)
    frozen = [p for n, p in model.named_parameters() if ".layers." in n and int(n.split(".")[2]) not in opt.active]
    assert frozen and not any(p.requires_grad or p in opt.state for p in frozen)
