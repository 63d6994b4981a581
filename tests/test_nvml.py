"""CUDA_VISIBLE_DEVICES narrows NVML's view the way CUDA narrows its own (a fake pynvml: no GPU needed)."""
import pytest

from harness.nvml import visible_handle, visible_handles


class FakeNvml:
    class NVMLError(Exception):
        pass

    uuids = ["GPU-aaaa", "GPU-bbbb"]

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"handle{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.uuids:
            raise self.NVMLError(uuid)
        return f"handle{self.uuids.index(uuid)}"


@pytest.mark.parametrize("visible,expected", [
    (None, ["handle0", "handle1"]),
    ("1", ["handle1"]),
    ("1,0", ["handle1", "handle0"]),
    ("GPU-bbbb", ["handle1"]),
    ("0,7,1", ["handle0"]),  # CUDA stops at the first entry that names no GPU
    ("GPU-zzzz,0", []),
    ("", []),
    ("-1", []),
])
def test_visible_handles_follow_cuda_visible_devices(monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_handles(FakeNvml()) == expected


def test_visible_handle_maps_cuda_index_to_the_host_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_handle(FakeNvml(), 0) == "handle1"
    with pytest.raises(IndexError, match="not among the 1 visible"):
        visible_handle(FakeNvml(), 1)
