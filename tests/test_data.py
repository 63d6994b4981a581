import math
from collections import Counter

import pytest
import torch

from harness.data import RandomWindows, eval_batches, load_tokens, split_windows
from harness.schema import SyntheticSpec, TextSpec


def _spec(**kw):
    base = dict(name="synthetic", kind="synthetic", vocab_size=64, branching=4, train_tokens=200_000,
                eval_tokens=20_000, seed=7)
    return SyntheticSpec(**{**base, **kw})


def test_synthetic_corpus_has_the_stated_entropy_floor():
    train, held_out, info = load_tokens(_spec())
    p = 1 / torch.arange(1, 5, dtype=torch.float64)
    p /= p.sum()
    assert info["entropy_floor"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    pairs = Counter(zip(train[:-1].tolist(), train[1:].tolist(), strict=True))
    firsts = Counter(train[:-1].tolist())
    n = len(train) - 1
    empirical = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    assert empirical == pytest.approx(info["entropy_floor"], abs=0.02)


def test_synthetic_is_deterministic_and_eval_is_a_different_sample():
    a_train, a_eval, _ = load_tokens(_spec())
    b_train, b_eval, _ = load_tokens(_spec())
    assert torch.equal(a_train, b_train) and torch.equal(a_eval, b_eval)
    assert not torch.equal(a_train[: len(a_eval)], a_eval)
    assert int(a_train.max()) < 64


def test_text_file_is_byte_tokens_with_held_out_tail(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo\nworld\n" * 50)
    train, held_out, info = load_tokens(TextSpec(name="t", kind="text", path=str(path), eval_fraction=0.2,
                                                 tokenizer="bytes"))
    total = len(("héllo\nworld\n" * 50).rstrip("\n").encode())
    assert len(train) + len(held_out) == total and int(train.max()) < 256
    assert info == {"tokenizer": "bytes", "tokenizer_vocab_size": 256, "tokenizer_hash": None}


def test_windows_are_seeded_and_eval_batches_fixed():
    tokens = torch.arange(10_000)
    a, b = RandomWindows(tokens, 4, 16, seed=3), RandomWindows(tokens, 4, 16, seed=3)
    assert torch.equal(a.next(), b.next())
    batches = eval_batches(tokens, 4, 16, 3)
    assert len(batches) == 3 and torch.equal(batches[0][0], torch.arange(16))
    with pytest.raises(ValueError, match="fewer than one batch"):
        eval_batches(torch.arange(10), 4, 16, 1)


def test_whole_split_eval_windows_cover_the_split_or_the_cap():
    """A quality run's eval: non-overlapping seq_len windows over the whole split (or its first max_tokens), batches
    of batch_size windows, the last batch smaller; fewer than seq_len tokens left over are dropped."""
    tokens = torch.arange(1000)
    batches = split_windows(tokens, 4, 16, max_tokens=10**6)
    assert [len(b) for b in batches] == [4] * 15 + [2]  # 62 windows: 992 tokens, the last 8 dropped
    assert torch.equal(torch.cat(batches).reshape(-1), torch.arange(992))
    assert sum(b.numel() for b in split_windows(tokens, 4, 16, max_tokens=100)) == 96  # 6 windows of the first 100


@pytest.mark.parametrize("raw", [b"a\r\nb\rc\n\n", b"\n", b"\r\n\r\n", b"x\x0by\x0cz\xc2\x85w\xe2\x80\xa8v\n\n\n",
                                 b"\xef\xbb\xbfno final newline", b"a\r"])
def test_text_files_read_as_datasets_text_loader_reads_them(tmp_path, raw):
    """read_text, which planning also uses to count a file's tokens, gives what datasets' "text" loader gives:
    universal newlines, lines joined by \\n, no final line break."""
    import datasets

    from harness.data import read_text

    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)
    datasets.disable_progress_bars()
    lines = datasets.load_dataset("text", data_files={"train": str(path)}, split="train", cache_dir=str(tmp_path / "c"))
    assert read_text(str(path)) == "\n".join(lines["text"])
