"""The torchao 4-bit AdamW wrapper trains, with about one byte of state per parameter (two 4-bit moments)."""
import pytest

from harness.probes import optimizer_state_tensors, storage_bytes
from methods import adamw, torchao_adamw4bit
from tests.methods.common import train_linear_pair


def test_torchao_adamw4bit_trains_near_adamw_with_a_byte_per_parameter():
    pytest.importorskip("torchao")
    models, opts, losses = train_linear_pair(
        (torchao_adamw4bit, {"lr": 1e-3}), (adamw, {"lr": 1e-3}))
    # 4-bit moments are coarse: compare progress, not weights
    assert losses[0][-1] < losses[0][0] and abs(losses[0][-1] - losses[1][-1]) < 0.1 * losses[0][0]
    matrices = sum(p.numel() for p in models[0].parameters() if p.numel() >= 4096)
    assert storage_bytes(optimizer_state_tensors(opts[0])) / matrices < 1.3
