"""The torchao 8-bit AdamW wrapper: tracks our adamw8bit step by step, and its subclass state is counted through the
inner tensors (≈ 2 bytes per parameter, not the 8 a naive numel × element_size of the wrapper would give)."""
import pytest
import torch

from harness.probes import storage_bytes
from methods import adamw, adamw8bit, torchao_adamw8bit
from tests.methods.common import assert_losses_track, train_linear

SETTINGS = {"lr": 1e-3, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}  # none at its default


def test_torchao_adamw8bit_tracks_ours_and_counts_inner_bytes():
    pytest.importorskip("torchao")
    (model, opt, theirs), (_, _, ours), (_, _, full) = train_linear(
        [(torchao_adamw8bit, SETTINGS), (adamw8bit, SETTINGS), (adamw, SETTINGS)])
    assert_losses_track(ours, theirs, full)
    matrices = [p for p in model.parameters() if p.numel() >= 4096]  # torchao keeps small tensors in fp32
    n = sum(p.numel() for p in matrices)
    state = [t for p in matrices for t in opt.state[p].values() if isinstance(t, torch.Tensor)]
    naive = sum(t.numel() * t.element_size() for t in state)
    per_param = storage_bytes(state) / n
    # codes + one fp32 scale per 256 + torchao's 256-entry fp32 code book stored with every state tensor
    assert 2.0 <= per_param <= 2.1 and naive / n >= 7.9
