"""Token streams for training and held-out evaluation.

- synthetic: a first-order Markov chain generated in code. Token s moves to σ((s + o_j) mod V) with probability
  p_j ∝ 1/(j+1), j < branching (distinct successors, the same p for every state), so the entropy rate — the
  lowest achievable eval loss in nats/token — is exactly H(p), whatever the stationary distribution. Chains are
  sampled in parallel and concatenated (one non-Markov transition per chain boundary, ~0.03 % of tokens).
- text: a local UTF-8 file read as `datasets.load_dataset("text")` reads it (read_text); without an eval file the last
  eval_fraction of the characters is held out (train_split), before tokenizing, so a BPE never sees held-out text.
- hub: a hub text dataset through `datasets.load_dataset(name)`.
Text is tokenized as dataset.tokenizer says (harness/tokenizer.py: a BPE trained on the training split, bytes, or a
hub tokenizer).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from harness import tasks
from harness import tokenizer as tokenizer_lib
from harness.schema import HubDataSpec, SyntheticSpec, TaskSpec, TextSpec

_CHAINS = 256


def _markov_chain(spec: SyntheticSpec, n_tokens: int, sample_seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed)  # the chain itself: the same for train and eval
    sigma = torch.randperm(spec.vocab_size, generator=g)
    offsets = torch.randperm(spec.vocab_size, generator=g)[: spec.branching]
    probs = successor_probs(spec.branching)
    g.manual_seed(sample_seed)  # the sample path: different for train and eval
    length = math.ceil(n_tokens / _CHAINS)
    choices = torch.multinomial(probs.expand(_CHAINS, -1), length, replacement=True, generator=g)
    state = torch.randint(spec.vocab_size, (_CHAINS,), generator=g)
    out = torch.empty(_CHAINS, length, dtype=torch.long)
    for t in range(length):
        out[:, t] = state
        state = sigma[(state + offsets[choices[:, t]]) % spec.vocab_size]
    return out.reshape(-1)[:n_tokens].contiguous()


def successor_probs(branching: int) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, branching + 1, dtype=torch.float64)
    return weights / weights.sum()


def entropy_floor(spec: SyntheticSpec) -> float:
    p = successor_probs(spec.branching)
    return float(-(p * p.log()).sum())


def read_text(path: str) -> str:
    """The file's lines joined by "\\n", as datasets' "text" loader gives them: universal newlines ("\\r\\n" and
    "\\r" read as "\\n") and no final line break. UnicodeDecodeError (its `start` a byte offset in the file) or
    OSError when the file cannot be read as UTF-8 text."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return text.removesuffix("\n")


def train_split(n: int, eval_fraction: float) -> int:
    """How many of a corpus's first characters train when its last eval_fraction is held out."""
    return int(n * (1 - eval_fraction))


def _text_splits(spec: TextSpec) -> tuple[str, str]:
    text = read_text(spec.path)
    if spec.eval_path is not None:
        return text, read_text(spec.eval_path)
    cut = train_split(len(text), spec.eval_fraction)
    return text[:cut], text[cut:]


def _hub_splits(spec: HubDataSpec) -> tuple[str, str]:
    import datasets

    from methods import MissingRequirement

    def split_text(split: str) -> str:
        try:
            rows = datasets.load_dataset(spec.hub_name, spec.hub_config, split=split)
        except Exception as e:  # not cached and no network, or no such name: the job is skipped, the row says why
            raise MissingRequirement(f"dataset.hub_name={spec.hub_name} (split {split}) could not be loaded through "
                                     f"datasets (network or local cache): {type(e).__name__}: {str(e)[:160]}") from None
        if spec.text_field not in rows.column_names:
            raise ValueError(f"dataset.text_field={spec.text_field} is not a column of {spec.hub_name}; its columns: "
                             f"{', '.join(rows.column_names)}")
        return "\n".join(rows[spec.text_field])

    return split_text(spec.split), split_text(spec.eval_split)


TEXT_SPLITS = {TextSpec: _text_splits, HubDataSpec: _hub_splits, TaskSpec: tasks.splits}


def load_tokens(spec, vocab_size: int | None = None, cache=None,
                encoder=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train tokens, eval tokens, info for the row). Text is tokenized by spec.tokenizer, a BPE trained on the
    training split to vocab_size entries at most (the model's), or by `encoder` where given (a finetuned model's
    own tokenizer, harness/finetune.py); `cache` is the tokenizer cache folder (None: none)."""
    if isinstance(spec, SyntheticSpec):
        train = _markov_chain(spec, spec.train_tokens, spec.seed + 1)
        held_out = _markov_chain(spec, spec.eval_tokens, spec.seed + 2)
        return train, held_out, {"entropy_floor": entropy_floor(spec)}
    if type(spec) not in TEXT_SPLITS:
        raise TypeError(f"no loader for {type(spec).__name__}")
    train_text, eval_text = TEXT_SPLITS[type(spec)](spec)
    encoder = encoder or tokenizer_lib.make_encoder(spec.tokenizer, train_text, vocab_size, spec.tokenizer_name, cache)
    train, held_out = (torch.from_numpy(tokenizer_lib.encode(encoder, text, cache).astype(np.int64))
                       for text in (train_text, eval_text))
    return train, held_out, encoder.row()


class RandomWindows:
    """Training batches: windows at offsets drawn from a seeded generator (the data order is part of the seed)."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int):
        if len(tokens) <= seq_len:
            raise ValueError(f"the training corpus has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(len(self.tokens) - self.seq_len, (self.batch_size,), generator=self.generator)
        return torch.stack([self.tokens[s : s + self.seq_len] for s in starts.tolist()])


def eval_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, n_batches: int) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows from the start of the held-out tokens (the same for every method)."""
    fit = len(tokens) // (batch_size * seq_len)
    if n_batches and fit == 0:
        raise ValueError(f"the held-out corpus has {len(tokens)} tokens, fewer than one batch "
                         f"({batch_size}x{seq_len}); lower train.batch_size/seq_len or train.eval_batches=0")
    n = min(n_batches, fit)
    return list(tokens[: n * batch_size * seq_len].view(n, batch_size, seq_len))


def split_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, max_tokens: int) -> list[torch.Tensor]:
    """The held-out split (its first max_tokens at most) as consecutive non-overlapping windows of seq_len tokens, in
    batches of batch_size windows; the last batch may hold fewer windows, and the tokens after the last whole window
    (fewer than seq_len) are dropped, so no window is padded."""
    n_windows = min(len(tokens), max_tokens) // seq_len
    windows = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    return list(windows.split(batch_size))
