"""The galore-torch 8-bit wrapper (CUDA only): trains on the GPU next to our galore8bit."""
import pytest

from methods import galore8bit, galore_torch8bit
from tests.methods.common import train_linear


def test_needs_cuda():
    assert galore_torch8bit.REQUIRES_CUDA


@pytest.mark.gpu
def test_galore_torch8bit_trains_next_to_ours():
    pytest.importorskip("galore_torch")
    settings = {"lr": 1e-3, "rank": 8, "update_gap": 5}
    (_, _, theirs), (_, _, ours) = train_linear([(galore_torch8bit, settings), (galore8bit, settings)], device="cuda")
    assert theirs[-1] < theirs[0] and ours[-1] < ours[0]
