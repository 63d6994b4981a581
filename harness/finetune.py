"""scenario=finetune: adapt a pretrained model to a target corpus or task, and measure what it gives up.

The job trains as a pretrain job does (harness/train.py: the method's optimizer, transforms and loop, on the
job's dataset, the target), from a pretrained model: model=checkpoint (a folder, or a base job of the sweep:
harness/checkpoints.py) or model=hub with model.pretrained=true. A quality run (quality.measure=true) adds to the
target's held-out loss and perplexity (eval_loss, eval_ppl, the verdict):
- forgetting: the source corpus's held-out loss after finetuning minus before (source_eval_loss -
  source_eval_loss_initial, nats/token; > 0: the model got worse where it was pretrained), as PEFT's method
  comparison reports it. The source is scenario.source, a dataset mapping that planning sets to the base job's
  dataset; without one (a hub model) nothing is measured and the row says so.
- a task dataset (dataset kind `task`, harness/tasks.py): task_accuracy (and task_accuracy_initial, before the
  first step) by label-word likelihood on the held-out examples.
The target is encoded with the source's tokenizer (the BPE the model was pretrained with, trained on the source's
training split and read from the tokenizer cache), not one trained on the target: a model's token ids mean what its
pretraining made them mean.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from harness import PROJECT_ROOT, tasks
from harness import data as data_lib
from harness import tokenizer as tokenizer_lib
from harness.schema import DATASET_KINDS, CheckpointSpec, ConfigError, HubModelSpec, SyntheticSpec, TaskSpec, _by_kind
from harness.train import Hooks, _HeldOut, run_training


def source_of(spec) -> object | None:
    source = spec.scenario.source
    return None if source is None else _by_kind(DATASET_KINDS, dict(source), "kind", "scenario.source")


def check(spec, config: dict) -> None:
    """Planning: a finetune job starts from a pretrained model; its source is a valid dataset; a task's corpora are
    files (made absolute in `config`, for the job)."""
    if isinstance(spec.dataset, TaskSpec):
        for i, corpus in enumerate(spec.dataset.corpora):
            for key in ("path", "eval_path"):
                if corpus.get(key):
                    path = Path(os.path.expanduser(corpus[key]))
                    path = path if path.is_absolute() else PROJECT_ROOT / path
                    if not path.is_file():
                        raise ConfigError(f"dataset.corpora[{i}].{key}: file not found: {path}")
                    config["dataset"]["corpora"][i][key] = str(path.resolve())
    if spec.scenario.kind != "finetune":
        return
    model = spec.model
    if not (isinstance(model, CheckpointSpec) or (isinstance(model, HubModelSpec) and model.pretrained)):
        raise ConfigError(f"scenario=finetune starts from a pretrained model; model {model.name} is built with "
                          "random weights: use model=checkpoint (model.path or model.base) or model=hub "
                          "model.pretrained=true")
    source = source_of(spec)
    if source is not None and isinstance(source, SyntheticSpec) != isinstance(spec.dataset, SyntheticSpec):
        raise ConfigError("scenario.source and the dataset must both be synthetic or both text: a synthetic "
                          "chain's ids are not a tokenizer's")


class FinetuneHooks(Hooks):
    def __init__(self, spec, device):
        self.spec, self.device = spec, device
        self.source_tokens = self.encoder = self.source_eval = None

    def tokens(self, spec, cache):
        source, vocab, info = source_of(spec), spec.model.vocab_size, {"source_dataset": None}
        if isinstance(source, SyntheticSpec):
            self.source_tokens = data_lib.load_tokens(source, vocab, cache)[1]
            info = {"source_dataset": source.name}
        elif source is not None:
            source_train, source_held_out = data_lib.TEXT_SPLITS[type(source)](source)
            self.encoder = tokenizer_lib.make_encoder(source.tokenizer, source_train, vocab, source.tokenizer_name,
                                                      cache)
            self.source_tokens = torch.from_numpy(
                tokenizer_lib.encode(self.encoder, source_held_out, cache).astype(np.int64))
            info = {"source_dataset": source.name, "tokenizer_from": f"source {source.name}"}
        train, held_out, data_info = data_lib.load_tokens(spec.dataset, vocab, cache, encoder=self.encoder)
        if isinstance(spec.dataset, TaskSpec) and self.encoder is None:  # no source: the task's own tokenizer
            self.encoder = tokenizer_lib.make_encoder(spec.dataset.tokenizer, tasks.splits(spec.dataset)[0], vocab,
                                                      spec.dataset.tokenizer_name, cache)
        return train, held_out, {**data_info, **info}

    def _accuracy(self, model) -> float | None:
        if not isinstance(self.spec.dataset, TaskSpec):
            return None
        return tasks.accuracy(model, self.encoder.encode, self.spec.dataset,
                              tasks.examples(self.spec.dataset, "eval"), self.device)

    def start(self, model, record: dict) -> None:
        if self.source_tokens is not None:
            self.source_eval = _HeldOut(model, self.source_tokens, self.spec, self.device)
            record["source_eval_loss_initial"] = self.source_eval.loss(0)
        else:
            record["forgetting_reason"] = "no scenario.source: the corpus the model was pretrained on is unknown"
        record["task_accuracy_initial"] = self._accuracy(model)

    def end(self, model, record: dict) -> None:
        if not self.spec.quality.measure:
            return
        if self.source_eval is not None:
            record["source_eval_loss"] = self.source_eval.loss(self.spec.train.steps)
            record["forgetting"] = record["source_eval_loss"] - record["source_eval_loss_initial"]
            record["source_eval_tokens"] = self.source_eval.tokens
        record["task_accuracy"] = self._accuracy(model)
        if isinstance(self.spec.dataset, TaskSpec):
            record["task_examples"] = len(tasks.examples(self.spec.dataset, "eval"))


def run_finetune(spec, device, record: dict, inject_fault=lambda stage, model: None) -> None:
    run_training(spec, device, record, inject_fault, FinetuneHooks(spec, device))
