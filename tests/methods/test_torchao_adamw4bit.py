"""The torchao 4-bit AdamW wrapper runs torchao's AdamW4bit with our options (no native 4-bit rule to hold it
against: the wrapper must equal the package used directly, loss for loss), with about one byte of state per
parameter (two 4-bit moments)."""
import pytest

from harness.probes import optimizer_state_tensors, storage_bytes
from methods import adamw, torchao_adamw4bit
from tests.methods.common import train_linear

SETTINGS = {"lr": 1e-3, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1, "block_size": 64}


class Direct:
    """torchao's AdamW4bit built by hand from SETTINGS, as a method module for train_linear."""

    Options = torchao_adamw4bit.Options

    @staticmethod
    def build(named_params, options, device):
        from torchao.optim import AdamW4bit

        return AdamW4bit([p for _, p in named_params], **{**SETTINGS, "betas": tuple(SETTINGS["betas"])})


def test_torchao_adamw4bit_is_the_package_with_our_options_and_a_byte_per_parameter():
    pytest.importorskip("torchao")
    (model, opt, wrapped), (_, _, direct), (_, _, full) = train_linear(
        [(torchao_adamw4bit, SETTINGS), (Direct, SETTINGS), (adamw, {k: v for k, v in SETTINGS.items()
                                                                     if k != "block_size"})])
    assert wrapped == direct  # same package, same options, same data: bit for bit
    assert wrapped[-1] < wrapped[0] and wrapped != full  # it trains, and its state is not fp32 AdamW's
    matrices = sum(p.numel() for p in model.parameters() if p.numel() >= 4096)
    assert storage_bytes(optimizer_state_tensors(opt)) / matrices < 1.3
