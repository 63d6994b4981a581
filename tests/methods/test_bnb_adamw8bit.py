"""The bitsandbytes wrapper trains where bitsandbytes is installed (CPU or GPU) and tracks our native 8-bit AdamW:
both losses are recorded at every step and compared against the noise 8-bit state brings (distance to fp32 AdamW)."""
import pytest
import torch

from methods import adamw, adamw8bit, bnb_adamw8bit
from tests.methods.common import assert_losses_track, train_linear

# every option away from its default, so a wrapper that drops one is caught
SETTINGS = {"lr": 1e-3, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}


def test_bnb_adamw8bit_tracks_ours_step_by_step():
    pytest.importorskip("bitsandbytes")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (_, _, theirs), (_, _, ours), (_, _, full) = train_linear(
        [(bnb_adamw8bit, SETTINGS), (adamw8bit, SETTINGS), (adamw, SETTINGS)], device=device)
    assert_losses_track(ours, theirs, full)
