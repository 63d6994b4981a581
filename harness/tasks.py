"""Classification tasks as text (dataset kind `task`), scored by label-word likelihood.

An example is an input, the task's template and a label word: "<input><template><label>". Training reads the
training examples joined by blank lines as one text (causal LM loss over all of it, so the label follows its input
as the model learns to predict it); accuracy scores each held-out input as MeZO (Malladi et al., 2023, §3 and
App. E: prompt-based finetuning) and ZO-Bench (Zhang et al., 2024) score SST-2: the prediction is the label whose
word is most likely after "<input><template>", log p(label tokens | context) summed over the label's tokens.

Tasks (TASKS):
- corpus_source: which corpus a passage comes from, built offline from local corpora (e.g. WikiText-2 against Tiny
  Shakespeare): `passage_chars` characters cut at word boundaries, line breaks turned into spaces, at seeded offsets
  of each corpus's training split (training examples) or held-out split (held-out examples); label i is corpus i.
- sst2: SST-2 (Socher et al., 2013) through `datasets` from the local cache only (glue/sst2: train and validation);
  absent, the job is `skipped` with the reason. MeZO's template for SST-2 is "<sentence> It was [terrible|great]".
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

SEED = 1234  # passage offsets: the same examples for every job


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def _corpus_splits(corpus: dict, eval_fraction: float) -> tuple[str, str]:
    from harness.data import read_text, train_split

    text = read_text(corpus["path"])
    if corpus.get("eval_path"):
        return text, read_text(corpus["eval_path"])
    cut = train_split(len(text), eval_fraction)
    return text[:cut], text[cut:]


def _passages(text: str, n: int, chars: int, rng: np.random.Generator) -> list[str]:
    if len(text) < 2 * chars:
        raise ValueError(f"a corpus split of {len(text)} characters is too short for passages of {chars}")
    out = []
    for start in rng.integers(0, len(text) - 2 * chars, size=n):
        window = text[start:start + 2 * chars]
        begin = window.find(" ") + 1  # start and end at word boundaries
        piece = window[begin:begin + chars]
        piece = piece[:piece.rfind(" ")] if " " in piece else piece
        out.append(" ".join(piece.split()))
    return out


def _corpus_source(spec, split: str) -> list[Example]:
    n = spec.train_examples if split == "train" else spec.eval_examples
    examples = []
    for label, corpus in enumerate(spec.corpora):
        text = _corpus_splits(corpus, spec.eval_fraction)[split != "train"]
        rng = np.random.default_rng([SEED, label, split == "train"])
        examples += [Example(p, label) for p in _passages(text, n, spec.passage_chars, rng)]
    order = np.random.default_rng([SEED, 7, split == "train"]).permutation(len(examples))
    return [examples[i] for i in order]


def _sst2(spec, split: str) -> list[Example]:
    from methods import MissingRequirement

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        data = datasets.load_dataset("glue", "sst2", split="train" if split == "train" else "validation")
    except Exception as e:  # not in the local cache (no network here): the row says so
        raise MissingRequirement(f"dataset sst2 (glue/sst2) is not in the local datasets cache: "
                                 f"{type(e).__name__}: {str(e)[:160]}") from None
    n = spec.train_examples if split == "train" else spec.eval_examples
    out = []
    for label in range(len(spec.labels)):
        rows = [r["sentence"].strip() for r in data if r["label"] == label][:n]
        out += [Example(text, label) for text in rows]
    order = np.random.default_rng([SEED, 7, split == "train"]).permutation(len(out))
    return [out[i] for i in order]


TASKS = {"corpus_source": _corpus_source, "sst2": _sst2}


def examples(spec, split: str) -> list[Example]:
    """The task's examples of `split` ("train" or "eval"), the same for every job."""
    return TASKS[spec.task](spec, split)


def as_text(spec, items: list[Example]) -> str:
    return "\n\n".join(f"{e.text}{spec.template}{spec.labels[e.label]}" for e in items)


def splits(spec) -> tuple[str, str]:
    """(training text, held-out text): the examples written out, for harness.data."""
    return as_text(spec, examples(spec, "train")), as_text(spec, examples(spec, "eval"))


@torch.no_grad()
def accuracy(model, encode, spec, items: list[Example], device: torch.device, batch_size: int = 32) -> float:
    """Fraction of `items` whose label word is the most likely after "<input><template>" (sum of the label tokens'
    log-probabilities; context and label encoded apart, as lm-evaluation-harness scores a continuation)."""
    labels = [list(encode(word)) for word in spec.labels]
    pairs = [(list(encode(e.text + spec.template)), k) for e in items for k in range(len(labels))]
    scores = []
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [ctx + labels[k] for ctx, k in chunk]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)  # padded on the right: earlier positions do not see it
        logprobs = model(input_ids=ids.to(device)).logits.float().log_softmax(-1).cpu()
        for row, (ctx, k) in enumerate(chunk):
            targets = torch.tensor(labels[k])
            positions = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(targets))
            scores.append(float(logprobs[row, positions, targets].sum()))
    model.train(was_training)
    per_item = np.asarray(scores).reshape(len(items), len(labels))
    correct = per_item.argmax(1) == np.asarray([e.label for e in items])
    return float(correct.mean()) if len(items) else math.nan
