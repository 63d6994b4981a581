"""Tokenizers for text datasets (dataset.tokenizer): bytes, a byte-level BPE trained on the training split, or a hub
tokenizer the user has cached.

- bytes: UTF-8 bytes as ids 0..255.
- bpe: byte-level BPE (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword Units"; bytes as
  the base alphabet as in GPT-2, Radford et al., 2019) trained with the `tokenizers` library on the training text only,
  never the held-out text, up to the model's vocab_size (32000 for the GaLore paper's LLaMA sizes). A merge needs a
  pair seen at least MIN_FREQUENCY times, so a small corpus stops below the model's vocabulary: the row gives the
  real size. Every byte is in the alphabet, so any held-out text encodes and decodes back exactly.
- hub: `transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)`: a tokenizer already on this machine.

Cache: a trained BPE is kept as <cache>/bpe-<key>.json, key = sha256 of (training text, vocab size, SETTINGS,
tokenizers version), and each encoded text as <cache>/tokens-<sha256 of (tokenizer hash, text)>.npy, so a sweep's
planning and jobs train and encode a corpus once. Files are written to a temp name and renamed: jobs running side by
side may race to write one, never read half of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.schema import ConfigError, SyntheticSpec

CACHE_ENV = "MEMBENCH_TOKENIZER_CACHE"  # a folder; default ${XDG_CACHE_HOME:-~/.cache}/membench/tokenizers
MIN_FREQUENCY = 2  # a pair seen once is not merged: a token for it would be trained on one occurrence
SETTINGS = {"model": "bpe", "pre_tokenizer": "byte_level", "add_prefix_space": False, "alphabet": "all 256 bytes",
            "min_frequency": MIN_FREQUENCY, "special_tokens": [], "training_input": "the whole text as one sequence"}


@dataclass(frozen=True)
class Encoder:
    """A tokenizer as the job uses it: `encode` maps text to ids below `vocab_size`; `hash` names it in the cache and
    the row (None for bytes, which need no name)."""

    kind: str
    vocab_size: int
    hash: str | None
    encode: Callable[[str], list[int] | np.ndarray]
    decode: Callable[[list[int]], str]

    def row(self) -> dict:
        return {"tokenizer": self.kind, "tokenizer_vocab_size": self.vocab_size, "tokenizer_hash": self.hash}


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(os.path.expanduser(configured))
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(root) / "membench" / "tokenizers"


def _writable(folder: Path) -> bool:
    """Tried by writing a file, as permission bits say nothing about root or read-only mounts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def cache_dir(results_dir: Path | None) -> Path | None:
    """The default cache folder when it can be written (a read-only HOME cannot), else <results_dir>/.cache/tokenizers;
    None (nothing cached, all in memory) when neither can be or no results folder is given (planning writes none)."""
    for folder in (default_cache_dir(), results_dir / ".cache" / "tokenizers" if results_dir else None):
        if folder is not None and _writable(folder):
            return folder
    return None


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def byte_encoder() -> Encoder:
    return Encoder("bytes", 256, None, lambda text: np.frombuffer(text.encode(), dtype=np.uint8),
                   lambda ids: bytes(ids).decode(errors="replace"))


def bpe_key(train_text: str, vocab_size: int) -> str:
    import tokenizers

    return _sha(train_text, str(vocab_size), json.dumps(SETTINGS, sort_keys=True), tokenizers.__version__)


def train_bpe(train_text: str, vocab_size: int):
    """A byte-level BPE of at most vocab_size entries trained on train_text (a tokenizers.Tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([train_text], trainer=trainer)  # one sequence: pre-tokenized as encode() will see it
    return tok


def bpe_encoder(train_text: str, vocab_size: int, cache: Path | None) -> Encoder:
    from tokenizers import Tokenizer

    if vocab_size is None or vocab_size < 256:
        raise ValueError(f"a byte-level BPE is trained to the model's vocab_size, at least its 256 bytes; got {vocab_size}")
    key = bpe_key(train_text, vocab_size)
    path = cache / f"bpe-{key}.json" if cache else None
    if path is not None and path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = train_bpe(train_text, vocab_size)
        if path is not None:
            _write_atomic(path, lambda tmp: tok.save(str(tmp)))
    return Encoder("bpe", tok.get_vocab_size(), key, lambda text: tok.encode(text).ids, tok.decode)


def hub_encoder(name: str) -> Encoder:
    """The cached hub tokenizer `name`; OSError when it is not on this machine."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    tok.model_max_length = int(1e30)  # a corpus is encoded whole; no warning about the model's context length
    backend = getattr(tok, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return Encoder("hub", len(tok), _sha(name, content), lambda text: tok.encode(text, add_special_tokens=False),
                   tok.decode)


def encode(encoder: Encoder, text: str, cache: Path | None) -> np.ndarray:
    """text's ids under `encoder` (int32), read from the cache when this tokenizer encoded this text before."""
    if encoder.hash is None or cache is None:
        return np.asarray(encoder.encode(text), dtype=np.int32)
    path = cache / f"tokens-{_sha(encoder.hash, text)}.npy"
    if path.is_file():
        return np.load(path)
    ids = np.asarray(encoder.encode(text), dtype=np.int32)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, ids)

    _write_atomic(path, save)
    return ids


def make_encoder(kind: str, train_text: str, vocab_size: int | None, name: str | None, cache: Path | None) -> Encoder:
    """The tokenizer dataset.tokenizer names (BUILDERS), for a model of vocab_size ids."""
    return BUILDERS[kind](train_text, vocab_size, name, cache)


BUILDERS = {
    "bytes": lambda text, vocab, name, cache: byte_encoder(),
    "bpe": lambda text, vocab, name, cache: bpe_encoder(text, vocab, cache),
    "hub": lambda text, vocab, name, cache: hub_encoder(name),
}


def check_vocab(data, model) -> None:
    """Planning: the dataset's token ids fit the model's vocabulary. A BPE is trained to the model's vocab_size, so it
    needs the model's size to be known (not a hub model's) and to hold the 256 bytes; a hub tokenizer must be cached
    here (loaded as the job will load it)."""
    vocab, name = model.vocab_size, model.name
    if isinstance(data, SyntheticSpec):
        if vocab and data.vocab_size > vocab:
            raise ConfigError(f"dataset {data.name} has {data.vocab_size} token ids but model {name} has "
                              f"vocab_size={vocab}; lower dataset.vocab_size or pick a larger model")
        return
    if data.tokenizer == "bpe" and vocab is None:
        raise ConfigError(f"dataset.tokenizer=bpe trains to the model's vocab_size, which model {name} does not give "
                          "while planning; use dataset.tokenizer=hub (the model's own tokenizer) or bytes")
    ids = {"bytes": 256, "bpe": 256}.get(data.tokenizer)  # a BPE's alphabet alone is the 256 bytes
    if data.tokenizer == "hub":
        try:
            ids = hub_encoder(data.tokenizer_name).vocab_size
        except (OSError, ValueError) as e:
            raise ConfigError(f"dataset.tokenizer_name={data.tokenizer_name}: no tokenizer of that name on this "
                              f"machine ({type(e).__name__}; loaded with local_files_only=True); save it there first "
                              "or use dataset.tokenizer=bpe") from None
    if vocab and ids > vocab:
        raise ConfigError(f"dataset.tokenizer={data.tokenizer} gives {ids} token ids but model {name} has "
                          f"vocab_size={vocab}; pick a larger model or another tokenizer")
