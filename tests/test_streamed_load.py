"""A checkpoint loaded into INT8 or NF4 weights is streamed layer by layer (harness/loading.py): the result equals
quantizing the fully loaded model, and the load's peak (live-tensor probe) stays within the quantized model plus one
decoder layer in full precision plus the quantizer's working copies, below the full-precision model."""
import pytest
import torch

from harness import checkpoints, loading
from harness.models import build_model
from harness.probes import LiveTensorProbe, model_tensors, storage_bytes
from harness.schema import LlamaSpec
from methods import int8_weights, qlora

SPEC = LlamaSpec("t", "llama", 128, 344, 4, 8, 512, 256)  # 8 layers: the whole model is far above one layer
CPU = torch.device("cpu")
PARTS = {"int8": (int8_weights, int8_weights.Options(group_size=64)), "nf4": (qlora, qlora.Options(rank=4))}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    checkpoints.save(build_model(SPEC, torch.float32, CPU), path)
    return path


@pytest.mark.parametrize("kind", PARTS)
def test_streamed_load_equals_quantizing_the_loaded_model(folder, kind):
    module, options = PARTS[kind]
    torch.manual_seed(1)
    streamed = loading.load_streamed(str(folder), torch.float32, CPU, (module, options))
    torch.manual_seed(1)
    whole = module.apply(loading.from_checkpoint(str(folder), torch.float32, CPU), options, CPU)
    a, b = streamed.state_dict(), whole.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert ([n for n, p in streamed.named_parameters() if p.requires_grad]
            == [n for n, p in whole.named_parameters() if p.requires_grad])
    batch = torch.randint(512, (2, 16))
    assert torch.equal(streamed(input_ids=batch).logits, whole(input_ids=batch).logits)


@pytest.mark.parametrize("kind", PARTS)
def test_streamed_load_peak_is_the_quantized_model_plus_one_layer(folder, kind, monkeypatch):
    probe = LiveTensorProbe()
    read = loading._Tensors.get

    def tracked(self, name):  # tensors read from the file are made outside the dispatcher: count them too
        tensor = read(self, name)
        probe.register([tensor])
        return tensor

    monkeypatch.setattr(loading._Tensors, "get", tracked)
    with probe:
        model = loading.load_streamed(str(folder), torch.float32, CPU, PARTS[kind])
    final = storage_bytes(model_tensors(model))
    layer = storage_bytes(model_tensors(build_model(SPEC, torch.float32, CPU).model.layers[0]))
    dense = storage_bytes(model_tensors(build_model(SPEC, torch.float32, CPU)))
    largest = SPEC.intermediate_size * SPEC.hidden_size * 4
    slack = 4 * largest  # the quantizer's fp32 working copies of one weight
    assert probe.peak <= final + layer + slack, (probe.peak, final, layer, slack)
    assert probe.peak < dense, (probe.peak, dense)
