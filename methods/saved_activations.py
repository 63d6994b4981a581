"""Saved-tensor hooks around a model's decoder: the machinery shared by the activation transforms
(methods/compress_activations.py, methods/offload_activations.py).

Autograd keeps, for the backward pass, the tensors each op saves. `torch.autograd.graph.saved_tensors_hooks(pack,
unpack)` replaces what is kept by pack(tensor) and hands unpack(kept) to the backward instead. The hooks here are
active while the decoder (embeddings, decoder layers, final norm: `model.get_decoder()`) runs its forward; the LM head
and the loss keep their tensors as they are (an 8-bit log-softmax would distort every token's gradient).

With non-reentrant activation checkpointing (methods/checkpointing.py) inside, a checkpointed layer saves only its
inputs through autograd, and those pass through these hooks: compression and offloading then act on what checkpointing
keeps, and the recomputed internals in the backward are saved plainly (the hooks are off by then).

Only floating-point activations of at least `min_numel` elements are encoded; parameters and their views (linear
layers save their weight) and small tensors are kept as they are. A tensor saved by several ops (the normed input of q, k and v) is
encoded once: the same view of the same storage returns the same handle for the rest of the forward pass.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn


class SavedTensorCodec:
    """Subclasses define encode(tensor) -> handle and decode(handle) -> tensor."""

    def __init__(self, min_numel: int):
        self.min_numel = min_numel
        self._seen: dict[tuple, tuple[weakref.ref, object]] = {}
        self._context = None

    def encode(self, tensor: torch.Tensor):
        raise NotImplementedError

    def decode(self, handle) -> torch.Tensor:
        raise NotImplementedError

    def begin_forward(self) -> None:
        """Called as the decoder's forward starts."""

    def _eligible(self, t: torch.Tensor) -> bool:
        # a linear layer saves its weight, or a transposed view of it: both stay as they are
        base = t if t._base is None else t._base
        return (type(t) is torch.Tensor and not isinstance(base, nn.Parameter) and t.is_floating_point() and t.dim()
                and t.numel() >= self.min_numel)

    def pack(self, t: torch.Tensor):
        if not self._eligible(t):
            return t
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        # the key is trusted only while the storage it was made from lives (a freed storage's address can come back);
        # not the tensor: each op saves its own short-lived view (matmul folds the batch dimensions of its input)
        seen = self._seen.get(key)
        if seen is not None and seen[0]() is not None:
            return seen[1]
        handle = _Handle(self.encode(t))
        self._seen[key] = (weakref.ref(storage), handle)
        return handle

    def unpack(self, packed):
        return self.decode(packed.payload) if isinstance(packed, _Handle) else packed

    def enter(self, module, args) -> None:
        self._seen.clear()
        self.begin_forward()
        self._context = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._context.__enter__()

    def exit(self, module, args, output) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
        self._seen.clear()  # the graph holds the handles now; the codec must not keep them past the backward


class _Handle:
    __slots__ = ("payload", "__weakref__")

    def __init__(self, payload):
        self.payload = payload


def install(model: nn.Module, codec: SavedTensorCodec) -> nn.Module:
    """Turn the codec's hooks on for every forward of the model's decoder (off again when it returns or raises)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    decoder.register_forward_pre_hook(codec.enter)
    decoder.register_forward_hook(codec.exit, always_call=True)
    model.membench_codec = codec  # kept reachable (tests, row fields)
    return model
