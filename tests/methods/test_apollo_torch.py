"""The apollo-torch wrapper trains on the same matrices; with the SVD projection it equals our APOLLO
(the rule-level parity is tests/methods/test_apollo.py::test_apollo_matches_apollo_torch_with_the_same_projection)."""
import pytest

from methods import apollo_mini, apollo_torch
from tests.methods.common import train_linear_pair


def test_apollo_torch_mini_trains_like_ours():
    pytest.importorskip("apollo_torch")
    models, opts, losses = train_linear_pair(
        (apollo_torch, {"lr": 1e-3, "rank": 1, "scale": 128.0, "scaling": "tensor"}), (apollo_mini, {"lr": 1e-3}))
    assert losses[0][-1] < losses[0][0] and losses[1][-1] < losses[1][0]
    # different random projections: the two runs agree on progress, not on weights
    assert abs(losses[0][-1] - losses[1][-1]) < 0.2 * losses[0][0]
    state = opts[0].state[next(iter(models[0].parameters()))]
    assert state["exp_avg"].shape[0] == 1 or state["exp_avg"].shape[1] == 1
