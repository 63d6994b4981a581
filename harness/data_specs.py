"""The dataset group's specs, one per `dataset.kind` (DATASET_KINDS): a synthetic corpus, a local text, a hub
dataset, a classification task built from local corpora (harness/tasks.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.parse import ConfigError, _check_seed


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    kind: Literal["synthetic"]
    vocab_size: int
    branching: int
    train_tokens: int
    eval_tokens: int
    seed: int

    def check(self) -> None:
        if self.vocab_size < 2 or not 1 <= self.branching <= self.vocab_size:
            raise ConfigError(f"dataset.vocab_size={self.vocab_size} / dataset.branching={self.branching} are invalid;"
                              " need vocab_size >= 2 and 1 <= branching <= vocab_size")
        for name in ("train_tokens", "eval_tokens"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"dataset.{name}={getattr(self, name)} is invalid; it must be >= 1024")
        _check_seed("dataset.seed", self.seed)


Tokenizer = Literal["bpe", "bytes", "hub"]  # harness/tokenizer.py


def _check_tokenizer(spec) -> None:
    named = spec.tokenizer_name is not None and spec.tokenizer_name.strip() != ""
    if spec.tokenizer == "hub" and not named:
        raise ConfigError("dataset.tokenizer=hub needs dataset.tokenizer_name (a hub id or a local folder)")
    if spec.tokenizer != "hub" and spec.tokenizer_name is not None:
        raise ConfigError(f"dataset.tokenizer_name is read with dataset.tokenizer=hub only, not "
                          f"dataset.tokenizer={spec.tokenizer}; set dataset.tokenizer=hub or drop the name")


@dataclass(frozen=True)
class TextSpec:
    name: str
    kind: Literal["text"]
    path: str
    eval_path: str | None = None
    eval_fraction: float = 0.1
    tokenizer: Tokenizer = "bpe"
    tokenizer_name: str | None = None

    def check(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"dataset.eval_fraction={self.eval_fraction} is invalid; it must be in (0, 1)")
        _check_tokenizer(self)


@dataclass(frozen=True)
class HubDataSpec:
    name: str
    kind: Literal["hub"]
    hub_name: str
    hub_config: str | None = None
    split: str = "train"
    eval_split: str = "validation"
    text_field: str = "text"
    tokenizer: Tokenizer = "bpe"
    tokenizer_name: str | None = None

    def check(self) -> None:
        if not self.hub_name.strip():
            raise ConfigError("dataset.hub_name is empty; give a hub dataset id")
        _check_tokenizer(self)


@dataclass(frozen=True)
class TaskSpec:
    """A classification task as text (harness/tasks.py): each example is an input, the template and a label word;
    training reads the examples as one text, accuracy scores each held-out input by its label words' likelihood."""

    name: str
    kind: Literal["task"]
    task: Literal["corpus_source", "sst2"]
    labels: list[str]
    template: str
    corpora: list[dict] = field(default_factory=list)  # corpus_source: one {path, eval_path} per label, in order
    passage_chars: int = 300
    train_examples: int = 512   # per label
    eval_examples: int = 200    # per label
    eval_fraction: float = 0.1
    tokenizer: Tokenizer = "bpe"
    tokenizer_name: str | None = None

    def check(self) -> None:
        for name in ("passage_chars", "train_examples", "eval_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dataset.{name}={getattr(self, name)} is invalid; it must be >= 1")
        if len(set(self.labels)) < 2:
            raise ConfigError(f"dataset.labels={list(self.labels)} is invalid; give at least two distinct label words")
        if self.task == "corpus_source" and len(self.corpora) != len(self.labels):
            raise ConfigError(f"dataset.corpora has {len(self.corpora)} entries for {len(self.labels)} labels; "
                              "give one corpus ({path, eval_path}) per label")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"dataset.eval_fraction={self.eval_fraction} is invalid; it must be in (0, 1)")
        _check_tokenizer(self)


DATASET_KINDS = {"synthetic": SyntheticSpec, "text": TextSpec, "hub": HubDataSpec, "task": TaskSpec}
