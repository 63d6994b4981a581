"""Planning's checks of a job's data: its text files exist and read as the job reads them, and its splits hold the
windows it will cut (tokens counted as the job tokenizes, memoized per file state). harness.config calls them before
any job starts, so a bad path or a too-short corpus is one ConfigError line, not a failed row."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from harness import PROJECT_ROOT
from harness.schema import ConfigError, SyntheticSpec, TextSpec


def resolve_path(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else PROJECT_ROOT / p


def check_text_file(path: Path, key: str) -> None:
    """The data file is there and reads as UTF-8 text as the job reads it (harness.data.read_text)."""
    from harness.data import read_text

    try:
        if path.is_dir():
            raise ConfigError(f"{key}={path} is a folder; give a text file")
        if not path.is_file():
            raise ConfigError(f"{key}: file not found: {path}")
        if path.stat().st_size == 0:
            raise ConfigError(f"{key}: file is empty: {path}")
        read_text(str(path))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}: not UTF-8 text ({path}, byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def split_sizes(data, model, config: dict) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """((tokens, where from) of the training split, the same of the held-out split); None where only the job can
    know them (a hub dataset). Text is tokenized as the job will (a BPE is trained here, or read from the tokenizer
    cache when it can be written; harness/tokenizer.py). Text paths are made absolute in `config`, for the job."""
    from dataclasses import replace

    if isinstance(data, SyntheticSpec):
        return (data.train_tokens, "dataset.train_tokens"), (data.eval_tokens, "dataset.eval_tokens")
    if not isinstance(data, TextSpec):
        return None
    paths = {key: str(resolve_path(getattr(data, key))) for key in ("path", "eval_path") if getattr(data, key)}
    config["dataset"].update(paths)
    n_train, n_held_out = text_token_counts(replace(data, **paths), model.vocab_size,
                                             tuple(file_state(path) for path in paths.values()))
    tokens = f"dataset.tokenizer={data.tokenizer}"
    if data.eval_path is None:
        how = f"dataset.path={data.path} with dataset.eval_fraction={data.eval_fraction} held out, {tokens}"
        return (n_train, how), (n_held_out, how)
    return (n_train, f"dataset.path={data.path}, {tokens}"), (n_held_out, f"dataset.eval_path={data.eval_path}, "
                                                              f"{tokens}")


def file_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:  # missing or unreadable: text_token_counts says which, in one line
        return None


@lru_cache(maxsize=16)
def content_digest(path: str, file_state: tuple | None) -> str:
    """sha256 of the file's bytes (`file_state` keys the memo, as for the token counts); the path when unreadable."""
    if file_state is None:
        return path
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


@lru_cache(maxsize=16)
def text_token_counts(data: TextSpec, vocab_size: int | None, file_states: tuple) -> tuple[int, int]:
    """Tokens of the training and held-out splits of a text dataset (absolute paths), after checking its files.
    Memoized: every job of a sweep on the same data asks, and each would read and encode the corpus again;
    `file_states` (mtime and size of each file) is in the key only so that a file changed since is read anew."""
    from harness.data import load_tokens
    from harness.tokenizer import cache_dir

    for key in ("path", "eval_path"):
        if getattr(data, key):
            check_text_file(Path(getattr(data, key)), f"dataset.{key}")
    train, held_out, _ = load_tokens(data, vocab_size, cache_dir(None))
    return len(train), len(held_out)


def check_local_hub_name(key: str, name: str | None, needs: str | None) -> None:
    """A hub name written as a path (/…, ./…, ../…, ~…) names a local folder to Hugging Face (relative to the
    working directory): it must be one, holding `needs` where given, or the job fails to load it."""
    if name is None or not name.startswith(("/", "./", "../", "~")):
        return
    folder = Path(os.path.expanduser(name))
    if not folder.is_dir():
        raise ConfigError(f"{key}={name} is a path but no folder is there; give a local folder or a hub id (org/name)")
    if needs and not (folder / needs).is_file():
        raise ConfigError(f"{key}={name} is a folder without {needs}; give a model folder saved by save_pretrained")


def check_windows(train, quality, sizes) -> None:
    """The job's data windows fit: one training window of seq_len+1 tokens (inputs and shifted labels) and, when
    evaluating, one held-out window of seq_len tokens in a quality run (harness.data.split_windows), else one
    held-out batch of batch_size x seq_len tokens (harness.data.RandomWindows, eval_batches)."""
    (n_train, train_from), (n_eval, eval_from) = sizes
    if n_train < train.seq_len + 1:
        raise ConfigError(f"the training split has {n_train} tokens ({train_from}); one window needs "
                          f"train.seq_len+1={train.seq_len + 1}: use more data or a smaller train.seq_len")
    if quality.measure:
        if min(n_eval, quality.eval_tokens) < train.seq_len:
            raise ConfigError(f"a quality run evaluates min(quality.eval_tokens={quality.eval_tokens}, the held-out "
                              f"split's {n_eval} tokens ({eval_from})), less than one window of "
                              f"train.seq_len={train.seq_len}: use more data or a smaller train.seq_len")
        return
    needed = (1 if train.batch_size == "auto" else train.batch_size) * train.seq_len  # auto: the job checks its own
    if train.eval_batches and n_eval < needed:
        raise ConfigError(f"the held-out split has {n_eval} tokens ({eval_from}); one eval batch needs "
                          f"train.batch_size x train.seq_len={needed}: use more data, smaller batches or "
                          "train.eval_batches=0")


def check_prompt_windows(infer, quality, sizes) -> None:
    """scenario=generate: the held-out split holds one prompt (prompts of a larger batch wrap around it) and, when
    measuring fidelity, one fidelity window."""
    n_eval, eval_from = sizes[1]
    need = max(infer.prompt_len, infer.fidelity_len if infer.fidelity else 0)
    if n_eval < need:
        raise ConfigError(f"the held-out split has {n_eval} tokens ({eval_from}); a prompt of infer.prompt_len or a "
                          f"fidelity window of infer.fidelity_len needs {need}: use more data or shorter lengths")
