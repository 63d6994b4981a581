"""The bitsandbytes wrapper trains where bitsandbytes is installed (CPU or GPU) and tracks our native 8-bit AdamW."""
import pytest
import torch

from harness.schema import parse
from methods import adamw8bit, bnb_adamw8bit


def test_bnb_adamw8bit_trains_and_stays_near_ours():
    pytest.importorskip("bitsandbytes")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 256, device=device) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    theirs = bnb_adamw8bit.build(list(layers[0].named_parameters()), parse(bnb_adamw8bit.Options, {"lr": 1e-2}, "m"),
                                 device)
    ours = adamw8bit.build(list(layers[1].named_parameters()), parse(adamw8bit.Options, {"lr": 1e-2}, "m"), device)
    x = torch.randn(64, 256, device=device)
    losses = []
    for _ in range(20):
        for layer, opt in zip(layers, (theirs, ours), strict=True):
            loss = layer(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # two different 8-bit quantizers of the same AdamW: 20 steps of lr 1e-2 move weights up to 0.2
    assert (layers[0].weight - layers[1].weight).abs().max() < 0.02
