"""The bitsandbytes wrapper: skipped (not failed) where bitsandbytes or CUDA is missing; on a GPU it trains."""
import importlib.util

import pytest
import torch

from harness.schema import parse
from methods import bnb_adamw8bit
from tests.helpers import FAST, rows_of, run_cli


def test_missing_package_or_cuda_gives_a_skipped_row(results_dir):
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes and CUDA are both present here")
    fast = [a for a in FAST if not a.startswith("run.device")]
    proc = run_cli(["method=bnb_adamw8bit", "run.device=auto", *fast], results_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = rows_of(results_dir)
    assert row["status"] == "skipped" and ("bitsandbytes" in row["error"] or "CUDA" in row["error"])


@pytest.mark.gpu
def test_bnb_adamw8bit_trains_on_gpu():
    pytest.importorskip("bitsandbytes")
    layer = torch.nn.Linear(512, 512, device="cuda")
    opt = bnb_adamw8bit.build(list(layer.named_parameters()), parse(bnb_adamw8bit.Options, {"lr": 1e-2}, "m"),
                              torch.device("cuda"))
    x = torch.randn(64, 512, device="cuda")
    first = None
    for _ in range(20):
        loss = layer(x).pow(2).mean()
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first
