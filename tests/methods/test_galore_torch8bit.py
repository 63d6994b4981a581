"""The galore-torch 8-bit wrapper (CUDA only): trains on the GPU next to our galore8bit."""
import pytest

from methods import galore8bit, galore_torch8bit
from tests.methods.common import train_linear_pair


def test_needs_cuda():
    assert galore_torch8bit.REQUIRES_CUDA


@pytest.mark.gpu
def test_galore_torch8bit_trains_next_to_ours():
    pytest.importorskip("galore_torch")
    settings = {"lr": 1e-3, "rank": 8, "update_gap": 5}
    models, opts, losses = train_linear_pair(
        (galore_torch8bit, settings), (galore8bit, settings), device="cuda")
    assert losses[0][-1] < losses[0][0] and losses[1][-1] < losses[1][0]
