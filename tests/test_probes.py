"""The live-tensor probe counts exact bytes; subclasses are counted through their inner tensors."""
import torch
from torch.utils._pytree import tree_map_only

from harness.probes import LiveTensorProbe, StepPeaks, optimizer_state_tensors, storage_bytes


def test_live_probe_tracks_allocation_and_release_exactly():
    probe = LiveTensorProbe()
    with probe:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.zeros(250, dtype=torch.float64)  # 2000 bytes
        assert probe.current == 6000
        view = a[10:20]  # a view shares storage: no new bytes
        assert probe.current == 6000
        del a
        assert probe.current == 6000  # the view keeps the storage alive
        del view
        assert probe.current == 2000
        c = b * 2
        del b, c
    assert probe.current == 0 and probe.peak == 6000


def test_registered_tensors_count_once():
    probe = LiveTensorProbe()
    w = torch.randn(10, 10)
    probe.register([w, w, w.t()])
    assert probe.current == 400


class Int8WithScales(torch.Tensor):
    """A toy quantized tensor: int8 codes + one fp32 scale per 256 values, shaped like an fp32 tensor."""

    @staticmethod
    def __new__(cls, codes, scales, shape):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32, device=codes.device)

    def __init__(self, codes, scales, shape):
        self.codes, self.scales = codes, scales

    def __tensor_flatten__(self):
        return ["codes", "scales"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return Int8WithScales(inner["codes"], inner["scales"], outer_size)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = tree_map_only(Int8WithScales, lambda t: t.codes.float(), (args, kwargs or {}))
        return func(*unwrap[0], **unwrap[1])


def test_subclass_state_is_counted_through_inner_tensors():
    n = 4096
    q = Int8WithScales(torch.zeros(n, dtype=torch.int8), torch.ones(n // 256), (n,))
    naive = q.numel() * q.element_size()
    assert storage_bytes([q]) == n + 4 * (n // 256)
    assert naive == 4 * n  # what a naive count would report: ~3.9x too large here


def test_optimizer_state_counts_tensors_kept_inside_objects():
    """galore-torch and apollo-torch keep each projection matrix in a projector object in the state."""

    class Projector:
        def __init__(self, matrix):
            self.matrix, self.rank = matrix, matrix.shape[1]

    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = torch.optim.SGD([w], lr=0.1)
    shared = Projector(torch.zeros(8, 2))
    opt.state[w] = {"step": 3, "exp_avg": torch.zeros(2, 8), "projector": shared, "again": [shared, (shared,)]}
    assert storage_bytes(optimizer_state_tensors(opt)) == 4 * (16 + 16)


def test_step_peaks_name_the_step_that_sets_the_peak(monkeypatch):
    """StepPeaks on fake CUDA counters: each step's peak is read then reset; the probed step's phase peaks join in;
    warm-up and overall peaks follow, with the load's peak in the overall one."""
    counters = {"allocated": 0, "reserved": 0}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: counters["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: counters["reserved"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: counters.update(allocated=0, reserved=0))
    peaks = StepPeaks(torch.device("cuda"))
    for allocated, reserved, phases, warmup in [(700, 800, {}, True), (900, 1000, {}, True),
                                                 (100, 1000, {"peak_allocated_backward": 850,
                                                              "peak_reserved_backward": 1000}, False),
                                                 (800, 900, {}, False)]:
        counters.update(allocated=allocated, reserved=reserved)
        peaks.end_step(phases, warmup)
        assert counters == {"allocated": 0, "reserved": 0}
    record = {"peak_allocated_load": 600, "peak_allocated_backward": 850, "peak_reserved_backward": 1000}
    peaks.record_into(record)
    assert record["step_peak_allocated"] == [700, 900, 850, 800]
    assert record["peak_allocated_warmup"] == 900 and record["peak_reserved_warmup"] == 1000
    assert record["peak_allocated_steps"] == 900 and record["peak_allocated"] == 900
    assert record["peak_reserved"] == 1000

    no_warmup = StepPeaks(torch.device("cuda"))  # one warm-up step: the probed step is the first
    counters.update(allocated=500, reserved=640)
    no_warmup.end_step({}, warmup=False)
    record = {"peak_allocated_load": 600}
    no_warmup.record_into(record)
    assert "peak_allocated_warmup" not in record and record["peak_allocated_steps"] == 500
    assert record["peak_allocated"] == 600 and record["peak_reserved"] == 640
