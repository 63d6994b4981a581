"""The torchao 8-bit AdamW wrapper: trains next to our adamw8bit, and its subclass state is counted through the
inner tensors (≈ 2 bytes per parameter, not the 8 a naive numel × element_size of the wrapper would give)."""
import pytest
import torch

from harness.probes import storage_bytes
from methods import adamw8bit, torchao_adamw8bit
from tests.methods.common import max_weight_gap, train_linear_pair


def test_torchao_adamw8bit_tracks_ours_and_counts_inner_bytes():
    pytest.importorskip("torchao")
    models, opts, losses = train_linear_pair(
        (torchao_adamw8bit, {"lr": 1e-3}), (adamw8bit, {"lr": 1e-3}))
    # two 8-bit quantizers of one rule; 20 steps of lr 1e-3 move a weight by at most 2e-2
    assert losses[0][-1] < losses[0][0] and max_weight_gap(models) < 5e-3
    matrices = [p for p in models[0].parameters() if p.numel() >= 4096]  # torchao keeps small tensors in fp32
    n = sum(p.numel() for p in matrices)
    theirs = [t for p in matrices for t in opts[0].state[p].values() if isinstance(t, torch.Tensor)]
    naive = sum(t.numel() * t.element_size() for t in theirs)
    per_param = storage_bytes(theirs) / n
    # codes + one fp32 scale per 256 + torchao's 256-entry fp32 code book stored with every state tensor
    assert 2.0 <= per_param <= 2.1 and naive / n >= 7.9
