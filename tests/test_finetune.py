"""scenario=finetune: the task's label-word scoring, the finetuning recipes, and the plan-time checks."""
from types import SimpleNamespace

import pytest
import torch

from harness import checkpoints, tasks
from harness.config import plan
from harness.models import build_model
from harness.schema import ConfigError, LlamaSpec
from tests.helpers import FAST

TINY = LlamaSpec("llama_tiny", "llama", 64, 172, 4, 2, 1024, 512)
TASK = SimpleNamespace(labels=[" no", " yes"], template=" ->")
ITEMS = [tasks.Example("ab cd", 0), tasks.Example("ef", 1), tasks.Example("gh ij kl", 1), tasks.Example("m", 0)]


def encode(text: str) -> list[int]:  # one id per character: contexts and labels of several lengths
    return [ord(c) % 1000 for c in text]


def test_accuracy_is_the_argmax_of_the_label_words_summed_log_likelihood():
    torch.manual_seed(0)
    model = build_model(TINY, torch.float32, torch.device("cpu")).eval()
    got = tasks.accuracy(model, encode, TASK, ITEMS, torch.device("cpu"), batch_size=3)
    correct = 0
    for item in ITEMS:  # the rule written plainly: one sequence at a time, no padding
        ctx = encode(item.text + TASK.template)
        scores = []
        for word in TASK.labels:
            ids = torch.tensor([ctx + encode(word)])
            logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
            scores.append(sum(logprobs[len(ctx) - 1 + j, t].item() for j, t in enumerate(encode(word))))
        correct += max(range(len(scores)), key=scores.__getitem__) == item.label
    assert got == correct / len(ITEMS)


def test_a_model_that_always_says_one_label_scores_that_labels_share():
    class Biased(torch.nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, 1000)
            logits[..., encode(" yes")[0]] = 5.0  # " yes" and " no" start differently: every position prefers yes
            logits[..., encode(" yes")[1:]] = 5.0
            return SimpleNamespace(logits=logits)

    assert tasks.accuracy(Biased(), encode, TASK, ITEMS, torch.device("cpu")) == 0.5


def test_corpus_source_examples_are_fixed_and_balanced(tmp_path):
    for name, text in (("a.txt", "alpha beta gamma delta " * 400), ("b.txt", "one two three four " * 400)):
        (tmp_path / name).write_text(text)
    spec = SimpleNamespace(task="corpus_source", labels=[" A", " B"], template="\nSource:", passage_chars=60,
                           train_examples=5, eval_examples=3, eval_fraction=0.2,
                           corpora=[{"path": str(tmp_path / "a.txt")}, {"path": str(tmp_path / "b.txt")}])
    held_out = tasks.examples(spec, "eval")
    assert held_out == tasks.examples(spec, "eval") and len(held_out) == 6
    assert sorted(e.label for e in held_out) == [0, 0, 0, 1, 1, 1]
    assert all(("alpha" in e.text) == (e.label == 0) and len(e.text) <= 60 for e in held_out)
    train_text, _ = tasks.splits(spec)
    assert train_text.count("\nSource: A") == 5 and train_text.count("\nSource: B") == 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    checkpoints.save(build_model(TINY, torch.float32, torch.device("cpu")), path)
    return path


def test_finetune_jobs_take_the_finetune_recipe_and_pretrain_jobs_the_models(folder):
    (job,) = plan(["scenario=finetune", "model=checkpoint", f"model.path={folder}", "method=lora", *FAST])
    lora = job.config["method"]["transform_options"]["lora"]
    assert (lora["rank"], lora["alpha"], lora["targets"]) == (8, 8.0, ["q_proj", "v_proj"])  # LoRA paper, Table 9
    assert job.config["method"]["optimizer"]["lr"] == 5e-4
    (given,) = plan(["scenario=finetune", "model=checkpoint", f"model.path={folder}", "method=lora",
                     "method.optimizer.lr=1e-3", *FAST])
    assert given.config["method"]["optimizer"]["lr"] == 1e-3  # the command line wins
    (pretrain,) = plan(["method=galore", "model=llama_60m", "dataset.vocab_size=512", *FAST[:-3], "run.device=cpu",
                        "run.host_memory_limit_gib=null"])
    assert pretrain.config["method"]["optimizer"]["rank"] == 128  # the model's pretraining recipe, not finetune's


def test_finetuning_a_randomly_initialized_model_is_refused():
    with pytest.raises(ConfigError, match="scenario=finetune starts from a pretrained model"):
        plan(["scenario=finetune", "model=llama_tiny", *FAST])


def test_sst2_outside_the_local_cache_skips_the_job_with_the_reason(monkeypatch):
    import datasets

    from methods import MissingRequirement

    def absent(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", absent)
    spec = SimpleNamespace(task="sst2", labels=[" terrible", " great"], train_examples=2, eval_examples=2)
    with pytest.raises(MissingRequirement, match="sst2 .* is not in the local datasets cache: ConnectionError"):
        tasks.examples(spec, "eval")
