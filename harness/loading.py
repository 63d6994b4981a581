"""The job's model: built from its config or loaded from a checkpoint, then its method's transforms applied.

A checkpoint (model=checkpoint) loads with `from_pretrained` on the job's device: transformers builds the model on
the meta device and fills each tensor from the safetensors file, so neither a random init nor a host copy is made.
A method whose transform quantizes the base weights (a module with STREAMED_LOAD: int8_weights, qlora) is streamed
instead (load_streamed): the skeleton is built on the meta device, and each decoder layer in turn is materialized
on the device, filled from the checkpoint and handed to the transform, which replaces its linear layers by
quantized ones before the next layer is read. The load's peak is then the quantized model plus one decoder layer in
the compute dtype (and the embeddings, norms and head, which stay in it), never the whole model in bf16.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import methods
from harness.models import _default_dtype, build_model
from harness.parts import TRANSFORMS, transform_options
from harness.schema import CheckpointSpec


def load_model(spec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The job's model after its method's transforms (in order)."""
    parts = [(TRANSFORMS[name], transform_options(spec.method, name)) for name in spec.method.transforms]
    if not isinstance(spec.model, CheckpointSpec):
        return methods.apply_transforms(parts, build_model(spec.model, dtype, device), device)
    streamed = [i for i, (part, _) in enumerate(parts) if getattr(part, "STREAMED_LOAD", False)]
    if streamed:
        first = streamed[0]
        model = load_streamed(spec.model.path, dtype, device, parts[first])
        return methods.apply_transforms(parts[:first] + parts[first + 1:], model, device)
    return methods.apply_transforms(parts, from_checkpoint(spec.model.path, dtype, device), device)


def from_checkpoint(path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, device_map={"": device}, use_cache=False, attn_implementation="sdpa")


class _Tensors:
    """The checkpoint's tensors by name, read one at a time from its safetensors file(s) (sharded or not)."""

    def __init__(self, folder: Path, device: torch.device):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                 else ["model.safetensors"])
        self.handles = [safe_open(str(folder / f), framework="pt", device=str(device)) for f in files]
        self.where = {key: h for h in self.handles for key in h.keys()}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise KeyError(f"the checkpoint has no tensor {name}")
        return self.where[name].get_tensor(name)


def load_streamed(path: str, dtype: torch.dtype, device: torch.device, part) -> torch.nn.Module:
    """A LLaMA checkpoint loaded layer by layer into the quantizing transform `part` = (module, options)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    config.use_cache = False
    config._attn_implementation = "sdpa"
    with torch.device("meta"), _default_dtype(dtype):
        model = transformers.AutoModelForCausalLM.from_config(config)
    tensors = _Tensors(Path(path), device)

    @torch.no_grad()
    def fill(module: torch.nn.Module, prefix: str) -> None:
        module.to_empty(device=device, recurse=True)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            tensor.copy_(tensors.get(prefix + name))

    def layers():
        for i, layer in enumerate(model.model.layers):
            fill(layer, f"model.layers.{i}.")
            yield layer

    module, options = part
    model = module.apply(model, options, device, layers=layers())
    fill(model.model.embed_tokens, "model.embed_tokens.")
    fill(model.model.norm, "model.norm.")
    if not config.tie_word_embeddings:
        fill(model.lm_head, "lm_head.")
    else:
        model.tie_weights()
    # RoPE's inverse frequencies are computed, not saved: build the module again on the device
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the streamed load left {len(left)} tensor(s) unfilled, e.g. {left[0]}")
    return model
