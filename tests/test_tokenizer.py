"""The tokenizers of text datasets (harness/tokenizer.py): a BPE trained on the training split round-trips text, is
cached by what it was trained from, and planning checks tokenizer against model."""
import json
import random

import numpy as np
import pytest

from harness import tokenizer as tok
from harness.config import plan
from harness.data import load_tokens
from harness.schema import ConfigError, TextSpec


def _corpus(seed: int, n_words: int = 3000) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnop", k=rng.randint(1, 8))) for _ in range(n_words)]
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, n_words, 12))


@pytest.fixture
def count_training(monkeypatch):
    """How many times a BPE was trained (not read from the cache)."""
    calls = []
    real = tok.train_bpe

    def counted(text, vocab_size):
        calls.append(vocab_size)
        return real(text, vocab_size)

    monkeypatch.setattr(tok, "train_bpe", counted)
    return calls


def test_bpe_round_trips_text_it_never_saw(tmp_path):
    encoder = tok.bpe_encoder(_corpus(0), 512, tmp_path)
    unseen = "Zürich — naïve 東京 🙂\n\n  tabs\tand spaces  \r and qrstuvwxyz"
    ids = tok.encode(encoder, unseen, tmp_path)
    assert encoder.decode(ids.tolist()) == unseen
    assert 256 < encoder.vocab_size <= 512 and int(ids.max()) < encoder.vocab_size
    text = _corpus(1)
    assert len(tok.encode(encoder, text, None)) < 0.75 * len(text.encode())  # merges learned on a like corpus


def test_bpe_is_cached_and_not_retrained(tmp_path, count_training):
    text = _corpus(0)
    first = tok.bpe_encoder(text, 512, tmp_path)
    second = tok.bpe_encoder(text, 512, tmp_path)
    assert count_training == [512]
    assert first.hash == second.hash and (tmp_path / f"bpe-{first.hash}.json").is_file()
    assert np.array_equal(tok.encode(first, text, tmp_path), tok.encode(second, text, tmp_path))
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 1  # the second encoding was read back


def test_cache_key_changes_with_corpus_and_vocabulary(tmp_path, count_training):
    a, b = _corpus(0), _corpus(1)
    keys = {tok.bpe_key(a, 512), tok.bpe_key(b, 512), tok.bpe_key(a, 400), tok.bpe_key(a + " ", 512)}
    assert len(keys) == 4
    for text, vocab in ((a, 512), (b, 512), (a, 400)):
        tok.bpe_encoder(text, vocab, tmp_path)
    assert count_training == [512, 512, 400] and len(list(tmp_path.glob("bpe-*.json"))) == 3


def test_bpe_trains_on_the_training_split_only(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(_corpus(0) + "\nheldoutonlyword " * 200)
    spec = TextSpec(name="t", kind="text", path=str(path), eval_fraction=0.2)
    train, held_out, info = load_tokens(spec, 512, tmp_path / "cache")
    text = path.read_text().removesuffix("\n")
    cut = int(len(text) * 0.8)
    assert info["tokenizer_hash"] == tok.bpe_key(text[:cut], 512)
    assert info == {"tokenizer": "bpe", "tokenizer_vocab_size": info["tokenizer_vocab_size"],
                    "tokenizer_hash": info["tokenizer_hash"]} and info["tokenizer_vocab_size"] <= 512
    vocab = json.loads(next((tmp_path / "cache").glob("bpe-*.json")).read_text())["model"]["vocab"]
    assert not any("heldout" in entry for entry in vocab)  # the held-out text taught it no merge
    assert len(train) > len(held_out) > 0


def test_cache_folder_falls_back_when_home_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path / "a_file" / "tokenizers"))  # below a file: never writable
    assert tok.cache_dir(tmp_path / "results") == tmp_path / "results" / ".cache" / "tokenizers"
    assert tok.cache_dir(None) is None  # planning writes no results folder; it tokenizes in memory
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path / "mine"))
    assert tok.cache_dir(tmp_path / "results") == tmp_path / "mine"


def test_planning_counts_bpe_tokens_and_leaves_the_cache_to_reuse(tmp_path, monkeypatch, count_training):
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(_corpus(0, 20000))
    args = ["dataset=text_file", f"dataset.path={path}", f"run.results_dir={tmp_path / 'r'}"]
    plan([*args, "train.seq_len=64"])
    plan([*args, "train.seq_len=64"])
    assert count_training == [1024]  # llama_tiny's vocab_size; the second plan read the cache
    text = path.read_text()
    cut = int(len(text) * 0.9)
    bpe_held_out = len(tok.encode(tok.bpe_encoder(text[:cut], 1024, None), text[cut:], None))
    batch = ["train.batch_size=20", "train.seq_len=512"]  # 10240 tokens: more than the BPE's, fewer than the bytes
    assert bpe_held_out < 20 * 512 < len(text[cut:].encode())
    plan([*args, *batch, "dataset.tokenizer=bytes"])
    with pytest.raises(ConfigError, match=rf"^the held-out split has {bpe_held_out} tokens .*dataset.tokenizer=bpe\); "
                                          r"one eval batch needs train.batch_size x train.seq_len=10240"):
        plan([*args, *batch])


@pytest.fixture
def hub_tokenizer(tmp_path):
    """A tokenizer saved as transformers saves one: what dataset.tokenizer=hub loads from a folder."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "hub_tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok.train_bpe(_corpus(0), 300)).save_pretrained(folder)
    return folder


def test_hub_tokenizer_from_a_local_folder(tmp_path, hub_tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text(_corpus(1, 20000))
    args = ["dataset=text_file", f"dataset.path={path}", "dataset.tokenizer=hub", f"dataset.tokenizer_name={hub_tokenizer}",
            "train.seq_len=64", f"run.results_dir={tmp_path / 'r'}"]
    (job,) = plan(args)
    train, held_out, info = load_tokens(job.spec.dataset, 1024, tmp_path / "cache")
    assert info["tokenizer"] == "hub" and info["tokenizer_vocab_size"] == 300 and int(train.max()) < 300
    with pytest.raises(ConfigError, match="dataset.tokenizer=hub gives 300 token ids but model llama_tiny has "
                                          "vocab_size=288"):
        plan([*args, "model.vocab_size=288"])
