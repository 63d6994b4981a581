"""Activation offloading to CPU memory with overlap (as torchtune's OffloadActivations; without the overlap,
torch.autograd.graph.save_on_cpu): every activation the decoder saves for the backward pass is copied into pinned
host memory and its device memory freed; the backward copies it back when it is needed.

    forward:  x ──D2H (side stream, non-blocking)──> pinned host copy;  x's device block is reused once the copy ran
    backward: host copy ──H2D──> device, for the tensor needed now and the `prefetch` saved just before it
              (the backward reads them next), on the side stream while the main stream computes
Device memory for saved activations drops to the tensors in flight; the price is PCIe traffic (2 × the saved bytes a
step) that the compute hides only partly: step_ms against the same method without offloading is its cost.

Which tensors (methods/saved_activations.py): the decoder's floating-point activations of at least `min_numel`
elements, each once; parameters stay on the device. The row's `activations_host` is the peak of the host copies
alive at once (B). A job on the CPU is `skipped`: host and device are one memory there, there is nothing to save
(the codec still runs there, as a copy, for the tests).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from methods.options import COUNT, Ranged, Rule
from methods.saved_activations import SavedTensorCodec, install

REPLACES = "the decoder's saved-tensor hooks"  # with compress_activations, only the inner hooks would act
REQUIRES_CUDA = True


@dataclass(frozen=True)
class Options(Ranged):
    RANGES = {"min_numel": COUNT,
              "prefetch": Rule("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)}

    min_numel: int = 16384  # smaller tensors are not worth a transfer (torchtune's default threshold is similar)
    prefetch: int = 8  # saved tensors copied back ahead of their use in the backward (a decoder layer saves ~10)


class _Offloaded:
    __slots__ = ("host", "copied", "index", "on_device", "fetched", "__weakref__")

    def __init__(self, host, copied, index):
        self.host, self.copied, self.index = host, copied, index
        self.on_device = self.fetched = None


class OffloadCodec(SavedTensorCodec):
    def __init__(self, device: torch.device, min_numel: int, prefetch: int):
        super().__init__(min_numel)
        self.device, self.prefetch = device, prefetch
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.order: list[weakref.ref] = []  # this forward's offloaded tensors, in the order they were saved
        self.host_bytes = self.host_peak = 0

    def begin_forward(self) -> None:
        self.order = []

    def _count(self, nbytes: int) -> None:
        self.host_bytes += nbytes
        self.host_peak = max(self.host_peak, self.host_bytes)

    def encode(self, t: torch.Tensor) -> _Offloaded:
        if self.cuda:
            host = torch.empty_like(t, device="cpu", pin_memory=True)  # its strides: kernels' backward expect them
            main = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(main)  # t is written by work queued on the main stream
            with torch.cuda.stream(self.stream):
                host.copy_(t.detach(), non_blocking=True)
            t.record_stream(self.stream)  # t's block is not handed out again before the copy has read it
            copied = self.stream.record_event()
        else:
            host, copied = t.detach().clone(), None
        payload = _Offloaded(host, copied, len(self.order))
        self.order.append(weakref.ref(payload))
        nbytes = host.untyped_storage().nbytes()
        self._count(nbytes)
        weakref.finalize(payload, self._count, -nbytes)
        return payload

    def _fetch(self, payload: _Offloaded) -> None:
        with torch.cuda.stream(self.stream):  # after its own D2H, queued earlier on this stream
            payload.on_device = payload.host.to(self.device, non_blocking=True)
            payload.fetched = self.stream.record_event()

    def decode(self, payload: _Offloaded) -> torch.Tensor:
        if not self.cuda:
            return payload.host
        if payload.on_device is None:
            self._fetch(payload)
        main = torch.cuda.current_stream(self.device)
        main.wait_event(payload.fetched)
        payload.on_device.record_stream(main)  # made on the side stream, used on the main one
        for ref in reversed(self.order[max(0, payload.index - self.prefetch):payload.index]):
            ahead = ref()
            if ahead is not None and ahead.on_device is None:
                self._fetch(ahead)
        return payload.on_device

    def row_fields(self) -> dict:
        return {"activations_host": self.host_peak}


def apply(model: torch.nn.Module, options: Options, device: torch.device) -> torch.nn.Module:
    return install(model, OffloadCodec(device, options.min_numel, options.prefetch))
