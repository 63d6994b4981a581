"""Activation offloading: lossless (identical loss and gradients), and the saved activations leave the device: on a
CPU host the copies are the only saved bytes left after the forward (the originals are freed); on a GPU
(`@pytest.mark.gpu`) memory_allocated after the forward drops by about the bytes that went to pinned host memory."""
import pytest
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import offload_activations
from tests.methods.common import saved_by_forward

SPEC = LlamaSpec(name="t", family="llama", hidden_size=64, intermediate_size=172, num_attention_heads=4,
                 num_hidden_layers=3, vocab_size=97, max_position_embeddings=64)
OPTIONS = {"min_numel": 256, "prefetch": 3}


def _model(device, offload: bool):
    torch.manual_seed(0)
    model = build_model(SPEC, torch.float32, device)
    if offload:
        offload_activations.apply(model, parse(offload_activations.Options, OPTIONS, "m"), device)
    return model.train()


def _batch(device):
    return torch.randint(0, 97, (4, 33), generator=torch.Generator().manual_seed(1)).to(device)


def test_lossless_and_only_the_copies_stay_saved():
    results = {}
    for offload in (False, True):
        model, batch = _model(torch.device("cpu"), offload), _batch("cpu")
        loss, saved, host = saved_by_forward(model, batch, lambda m=model, o=offload: m.membench_codec.host_bytes if o else 0)
        results[offload] = (loss, [p.grad for p in model.parameters()], saved, host)
    (loss, grads, saved, _), (loss_o, grads_o, saved_o, host) = results[False], results[True]
    torch.testing.assert_close(loss_o, loss, rtol=0, atol=0)
    for a, b in zip(grads_o, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the host copies hold most of what the plain run saves; what is left besides them is small (head, loss, masks)
    assert host > 0.5 * saved and saved_o - host < 0.5 * saved, (saved, saved_o, host)


@pytest.mark.gpu
def test_gpu_memory_drops_by_the_offloaded_bytes():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    after_forward, grads = {}, {}
    for offload in (False, True):
        model, batch = _model(device, offload), _batch(device)
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        loss = model(input_ids=batch, labels=batch).loss
        torch.cuda.synchronize()
        after_forward[offload] = torch.cuda.memory_allocated() - start
        host = model.membench_codec.host_bytes if offload else 0
        loss.backward()
        grads[offload] = [p.grad for p in model.parameters()]
    assert after_forward[False] - after_forward[True] > 0.8 * host > 0
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
