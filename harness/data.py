"""Token streams for training and held-out evaluation.

- synthetic: a first-order Markov chain generated in code. Token s moves to σ((s + o_j) mod V) with probability
  p_j ∝ 1/(j+1), j < branching (distinct successors, the same p for every state), so the entropy rate — the
  lowest achievable eval loss in nats/token — is exactly H(p), whatever the stationary distribution. Chains are
  sampled in parallel and concatenated (one non-Markov transition per chain boundary, ~0.03 % of tokens).
- text: a local UTF-8 file read as `datasets.load_dataset("text")` reads it (read_text), byte-level tokens (ids
  0..255); without an eval file the last eval_fraction of the tokens is held out (train_split).
- hub: a hub text dataset through `datasets.load_dataset(name)`, byte-level tokens.
"""
from __future__ import annotations

import math

import torch

from harness.schema import HubDataSpec, SyntheticSpec, TextSpec

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


def _bytes_to_tokens(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def read_text(path: str) -> str:
    """The file's lines joined by "\\n", as datasets' "text" loader gives them: universal newlines ("\\r\\n" and
    "\\r" read as "\\n") and no final line break. UnicodeDecodeError (its `start` a byte offset in the file) or
    OSError when the file cannot be read as UTF-8 text."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return text.removesuffix("\n")


def train_split(n_tokens: int, eval_fraction: float) -> int:
    """How many of a corpus's first tokens train when its last eval_fraction is held out."""
    return int(n_tokens * (1 - eval_fraction))


def load_tokens(spec) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train tokens, eval tokens, info for the row)."""
    if isinstance(spec, SyntheticSpec):
        train = _markov_chain(spec, spec.train_tokens, spec.seed + 1)
        held_out = _markov_chain(spec, spec.eval_tokens, spec.seed + 2)
        return train, held_out, {"entropy_floor": entropy_floor(spec)}
    if isinstance(spec, TextSpec):
        tokens = _bytes_to_tokens(read_text(spec.path))
        if spec.eval_path is not None:
            return tokens, _bytes_to_tokens(read_text(spec.eval_path)), {}
        cut = train_split(len(tokens), spec.eval_fraction)
        return tokens[:cut], tokens[cut:], {}
    if isinstance(spec, HubDataSpec):
        import datasets

        def split_text(split: str) -> str:
            ds = datasets.load_dataset(spec.hub_name, spec.hub_config, split=split)
            return "\n".join(ds[spec.text_field])

        return _bytes_to_tokens(split_text(spec.split)), _bytes_to_tokens(split_text(spec.eval_split)), {}
    raise TypeError(f"no loader for {type(spec).__name__}")


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
