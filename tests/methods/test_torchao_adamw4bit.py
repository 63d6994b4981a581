"""The torchao 4-bit AdamW wrapper trains, with about one byte of state per parameter (two 4-bit moments)."""
import pytest
import torch

from harness.probes import optimizer_state_tensors, storage_bytes
from harness.schema import parse
from methods import adamw, torchao_adamw4bit
from tests.methods.common import train_linear_pair


def test_torchao_adamw4bit_trains_near_adamw_with_a_byte_per_parameter():
    pytest.importorskip("torchao")
    cpu = torch.device("cpu")
    models, opts, losses = train_linear_pair(
        lambda named: torchao_adamw4bit.build(named, parse(torchao_adamw4bit.Options, {"lr": 1e-3}, "m"), cpu),
        lambda named: adamw.build(named, parse(adamw.Options, {"lr": 1e-3}, "m"), cpu))
    # 4-bit moments are coarse: compare progress, not weights
    assert losses[0][-1] < losses[0][0] and abs(losses[0][-1] - losses[1][-1]) < 0.1 * losses[0][0]
    matrices = sum(p.numel() for p in models[0].parameters() if p.numel() >= 4096)
    assert storage_bytes(optimizer_state_tensors(opts[0])) / matrices < 1.3
