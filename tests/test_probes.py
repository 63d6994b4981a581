"""The live-tensor probe counts exact bytes; subclasses are counted through their inner tensors."""
import torch
from torch.utils._pytree import tree_map_only

from harness.probes import LiveTensorProbe, optimizer_state_tensors, storage_bytes


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
