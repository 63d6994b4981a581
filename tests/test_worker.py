from types import SimpleNamespace

import pytest

from harness.worker import _gpu_figures


@pytest.mark.parametrize("nvml_name,expected", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                                 ("NVIDIA A100-SXM4-80GB", "a100_80gb"), ("NVIDIA L4", "l4"),
                                                 ("Some Future GPU", "unknown")])
def test_gpu_auto_finds_datasheet_figures(nvml_name, expected):
    record = {"gpu_name": nvml_name}
    _gpu_figures(SimpleNamespace(gpu=SimpleNamespace(name="auto", peak_bf16_flops=None)), record)
    assert record["gpu"] == expected
    if expected != "unknown":
        assert isinstance(record["gpu_peak_bf16_flops"], float) and record["gpu_peak_bf16_flops"] > 1e13
