import math
from collections import Counter

import pytest
import torch

from harness.config import plan
from harness.data import RandomWindows, eval_batches, load_tokens, split_windows
from harness.schema import SyntheticSpec, TextSpec
from harness.train import run_training
from tests.helpers import rows_of, run_cli


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


def _corpus(path, n_words=6000):
    rng = __import__("random").Random(0)
    words = ["".join(rng.choices("abcdefghij", k=rng.randint(1, 7))) for _ in range(n_words)]
    path.write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, n_words, 10)))
    return path


QUALITY = ["dataset=text_file", "train.steps=6", "train.warmup_steps=2", "train.seq_len=32",
           "train.batch_size=2", "train.eval_batches=1", "run.device=cpu"]


def _job(tmp_path, *overrides, measure="true"):
    (job,) = plan([f"dataset.path={_corpus(tmp_path / 'c.txt')}", *QUALITY, f"quality.measure={measure}", *overrides,
                   f"run.results_dir={tmp_path / 'r'}"])
    record = {}
    run_training(job.spec, torch.device("cpu"), record)
    return record


def test_a_quality_run_that_diverges_says_so_in_its_verdict(tmp_path):
    from harness.train import Diverged

    def nan_weights(stage, model):  # what run.inject_fault=nan_loss does, after the model is built
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    (job,) = plan([f"dataset.path={_corpus(tmp_path / 'c.txt')}", *QUALITY, "quality.measure=true",
                   f"run.results_dir={tmp_path / 'r'}"])
    record = {}
    with pytest.raises(Diverged):
        run_training(job.spec, torch.device("cpu"), record, nan_weights)
    assert record["verdict"] == "diverged" and "not finite" in record["verdict_reason"]
    assert record["train_curve"][-1][0] == record["diverged_step"] == 0 and math.isnan(record["train_curve"][-1][1])
    assert math.isnan(record["initial_eval_loss"])


def test_quality_run_evaluates_the_whole_held_out_split_with_curves(tmp_path):
    row = _job(tmp_path, "quality.eval_every=2")
    windows = row["eval_corpus_tokens"] // 32
    assert row["eval_tokens"] == 32 * windows and row["eval_batches"] == math.ceil(windows / 2) > 1
    assert [step for step, _ in row["eval_curve"]] == [0, 2, 4, 6]
    assert row["eval_curve"][0][1] == row["initial_eval_loss"] and row["eval_curve"][-1][1] == row["eval_loss"]
    assert row["initial_eval_loss"] == pytest.approx(math.log(1024), abs=0.3)  # llama_tiny at init: near uniform
    assert [step for step, _ in row["train_curve"]] == list(range(6))
    assert row["budget_steps"] == 6 and row["budget_tokens"] == 6 * 2 * 32
    assert row["budget_epochs"] == row["budget_tokens"] / row["train_corpus_tokens"]
    assert row["quality_measured"] and row["tokenizer"] == "bpe" and row["verdict"] in ("learned", "not_learning")
    assert row["verdict_reason"]


def test_quality_eval_stops_at_eval_tokens_and_a_memory_run_keeps_its_batches(tmp_path):
    row = _job(tmp_path, "quality.eval_tokens=100")
    assert row["eval_tokens"] == 96 and row["eval_batches"] == 2 and [s for s, _ in row["eval_curve"]] == [0, 6]
    memory = _job(tmp_path, measure="false")
    assert memory["eval_batches"] == 1 and memory["eval_tokens"] == 2 * 32 and not memory["quality_measured"]
    assert "eval_curve" not in memory and "initial_eval_loss" not in memory
    assert memory["verdict_reason"].startswith("memory run (not a quality measurement)")  # a health check only


def test_train_curve_is_strided_to_stay_small(tmp_path, monkeypatch):
    import harness.train

    monkeypatch.setattr(harness.train, "TRAIN_CURVE_POINTS", 4)  # 6 steps: every 2nd
    row = _job(tmp_path, measure="false")
    assert [step for step, _ in row["train_curve"]] == [0, 2, 4, 5]


def test_a_quality_row_from_the_cli_holds_curves_budget_and_verdict(tmp_path):
    proc = run_cli([f"dataset.path={_corpus(tmp_path / 'c.txt')}", *QUALITY, "quality.measure=true",
                    "quality.eval_every=3"], tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = rows_of(tmp_path / "r")
    assert [s for s, _ in row["eval_curve"]] == [0, 3, 6] and len(row["train_curve"]) == 6
    assert row["budget_tokens"] == 384 and row["tokenizer_vocab_size"] <= 1024 and len(row["tokenizer_hash"]) == 64
    assert row["verdict"] in ("learned", "not_learning") and row["quality_measured"] is True


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


def test_a_hub_dataset_from_a_local_folder_splits_by_slices_and_names_a_missing_column(tmp_path):
    """dataset.kind=hub reads through datasets.load_dataset, here a folder of JSON lines (as an instruction set such as
    conf/dataset/alpaca.yaml, one split held out by a slice); a text_field that is no column fails naming the columns."""
    import json

    from harness.schema import HubDataSpec

    lines = [{"text": f"### Instruction: say {i}\n### Response: {i}", "other": i} for i in range(50)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    spec = HubDataSpec("local", "hub", str(tmp_path), split="train[:80%]", eval_split="train[80%:]", tokenizer="bytes")
    train, held_out, _ = load_tokens(spec)
    text = lambda ids: bytes(ids.tolist()).decode()  # noqa: E731
    assert text(held_out).startswith("### Instruction: say 40\n") and text(held_out).endswith("### Response: 49")
    assert "say 39" in text(train) and "say 40" not in text(train)
    with pytest.raises(ValueError, match="dataset.text_field=body is not a column of .*: text, other"):
        load_tokens(HubDataSpec("local", "hub", str(tmp_path), split="train[:80%]", eval_split="train[80%:]",
                                text_field="body", tokenizer="bytes"))


def test_a_hub_dataset_neither_cached_nor_reachable_skips_the_job_with_the_reason(monkeypatch):
    import datasets

    from harness.schema import HubDataSpec
    from methods import MissingRequirement

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'tatsu-lab/alpaca' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingRequirement, match=r"dataset.hub_name=tatsu-lab/alpaca \(split train\[:98%\]\) could not"):
        load_tokens(HubDataSpec("alpaca", "hub", "tatsu-lab/alpaca", split="train[:98%]", eval_split="train[98%:]"))
