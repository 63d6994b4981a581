"""LoRA against its rule y = W x + (α/r) B A x, only A and B trainable; and against peft where it is installed."""
import pytest
import torch

from harness.models import build_model
from harness.schema import LlamaSpec, parse
from methods import lora
from tests.methods.common import DEVICES

SPEC = LlamaSpec(name="t", family="llama", hidden_size=32, intermediate_size=86, num_attention_heads=4,
                 num_hidden_layers=2, vocab_size=97, max_position_embeddings=64)


def _model(device="cpu"):
    torch.manual_seed(0)
    return build_model(SPEC, torch.float64, torch.device(device))


def test_lora_layer_matches_the_rule_and_only_adapters_train():
    model = lora.apply(_model(), parse(lora.Options, {"rank": 4, "alpha": 8.0}, "m"), torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 2 * 7 * SPEC.num_hidden_layers
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    expected = x @ layer.base.weight.T + (8.0 / 4) * (x @ layer.lora_a.T @ layer.lora_b.T)
    torch.testing.assert_close(layer(x), expected)


def test_train_rest_trains_everything_but_the_frozen_base_of_the_target_layers():
    model = lora.apply(_model(), parse(lora.Options, {"rank": 4, "train_rest": True}, "m"), torch.device("cpu"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.endswith("proj.base.weight")}
    assert len(frozen) == 7 * SPEC.num_hidden_layers


def test_lora_starts_as_the_base_model():
    base = _model()
    batch = torch.randint(0, 97, (2, 9))
    before = base(input_ids=batch).logits
    adapted = lora.apply(base, parse(lora.Options, {}, "m"), torch.device("cpu"))
    torch.testing.assert_close(adapted(input_ids=batch).logits, before)


def test_rank_larger_than_a_layer_is_refused():
    with pytest.raises(ValueError, match="exceeds a target layer"):
        lora.apply(_model(), parse(lora.Options, {"rank": 33}, "m"), torch.device("cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_matches_peft(device):
    peft = pytest.importorskip("peft")
    ours = lora.apply(_model(device), parse(lora.Options, {"rank": 4, "alpha": 8.0}, "m"), torch.device(device))
    theirs = peft.get_peft_model(_model(device), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=lora.DEFAULT_TARGETS))
    ours_layers = {n.removesuffix(".lora_a"): m for n, m in ours.named_parameters() if n.endswith("lora_a")}
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                key = name.removeprefix("base_model.model.")
                mine = ours.get_submodule(key)
                module.lora_A["default"].weight.copy_(mine.lora_a)
                mine.lora_b.normal_()
                module.lora_B["default"].weight.copy_(mine.lora_b)
    assert ours_layers
    batch = torch.randint(0, 97, (2, 9), device=device)
    loss_ours = ours(input_ids=batch, labels=batch).loss
    loss_theirs = theirs(input_ids=batch, labels=batch).loss
    torch.testing.assert_close(loss_ours, loss_theirs)
    loss_ours.backward()
    loss_theirs.backward()
    grads_ours = sorted(float(p.grad.norm()) for n, p in ours.named_parameters() if p.requires_grad)
    grads_theirs = sorted(float(p.grad.norm()) for n, p in theirs.named_parameters() if p.requires_grad)
    assert grads_ours == pytest.approx(grads_theirs, rel=1e-9)
