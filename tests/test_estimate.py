"""The memory estimate (harness/estimate.py): the caching-allocator replay's rules, the traced optimizer states
against closed forms of each method's rule (and those closed forms against the committed GPU rows' measured
optimizer_state), and the estimate against a few committed GPU rows' measured peaks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.cuda_alloc import CachingAllocator, round_size, segment_size
from harness.estimate import estimate, plan_for_gpu

ROWS = Path(__file__).resolve().parents[1] / "results" / "h200" / "methods_gpu.rows.jsonl"
MIB = 2**20


def test_allocator_rounds_and_sizes_segments_as_torch():
    assert (round_size(1), round_size(512), round_size(513)) == (512, 512, 1024)
    assert (segment_size(1000), segment_size(2 * MIB), segment_size(11 * MIB)) == (2 * MIB, 20 * MIB, 12 * MIB)


def test_allocator_counts_an_unsplit_block_whole_and_reuses_freed_blocks():
    alloc = CachingAllocator()
    assert alloc.malloc("a", 10 * MIB + MIB // 2) == 10 * MIB + MIB // 2  # a fresh 12 MiB segment, split (1.5 MiB)
    alloc.free("a")  # merged back into one free 12 MiB block
    # the cached 12 MiB block is taken by a 11.5 MiB request; what remains (0.5 MiB) is not split off (large pool
    # splits only above 1 MiB), so the whole block counts as allocated
    assert alloc.malloc("b", 11 * MIB + MIB // 2) == 12 * MIB
    assert alloc.reserved == 12 * MIB and alloc.allocated == 12 * MIB
    alloc.free("b")
    small = [alloc.malloc(i, 100) for i in range(3)]  # small pool: 512-byte blocks cut from one 2 MiB segment
    assert small == [512] * 3 and alloc.reserved == 14 * MIB
    for i in range(3):
        alloc.free(i)
    assert alloc.allocated == 0 and alloc.peak == 12 * MIB


def _llama(spec):
    m = spec.model
    return m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.vocab_size


def _matrices(spec):
    """(rows, cols) of every attention and MLP matrix (what low-rank methods project or adapt)."""
    h, i, layers, _ = _llama(spec)
    return [(h, h)] * 4 * layers + [(i, h), (i, h), (h, i)] * layers


def _rest(spec) -> int:
    """Values of the parameters outside the matrices: embedding, head, the norms."""
    h, _, layers, vocab = _llama(spec)
    return 2 * vocab * h + (2 * layers + 1) * h


def _n_rest(spec) -> int:
    return 2 + 2 * spec.model.num_hidden_layers + 1


def galore_state(spec, rank: int, bytes_per: int = 2) -> int:
    """GaLore (Zhao et al., 2024): per projected m x n matrix a projection min(m,n) x r and two Adam moments
    r x max(m,n); full-rank AdamW (two moments) on the rest. Moments and projection in the weights' dtype; step
    counts are Python numbers (methods/lowrank.fused_adamw makes the kernel's step tensors per call)."""
    low = sum(min(m, n) * rank + 2 * rank * max(m, n) for m, n in _matrices(spec))
    return bytes_per * (low + 2 * _rest(spec))


def apollo_mini_state(spec, bytes_per: int = 2) -> int:
    """APOLLO-Mini (Zhu et al., 2025): rank 1, tensor-wise scaling: per matrix the random projection min(m,n) x 1,
    two rank-1 moments 1 x max(m,n) in the weights' dtype and the norm limiter's previous norm (one fp32 value);
    AdamW on the rest. (The paper counts 2n + 2 per matrix: it regenerates the projection from a seed, this
    implementation keeps it.)"""
    low = sum(min(m, n) + 2 * max(m, n) for m, n in _matrices(spec))
    return bytes_per * (low + 2 * _rest(spec)) + 4 * len(_matrices(spec))


def adamw8bit_state(spec, block: int = 256) -> int:
    """8-bit AdamW (Dettmers et al., 2022): per parameter one byte per value for each moment and one fp32 absmax
    per block of 256 values for each (on CUDA the fused kernel updates the codes in place; the CPU path would
    re-quantize them into whole blocks, padding the last one)."""
    sizes = [m * n for m, n in _matrices(spec)]
    h, _, layers, vocab = _llama(spec)
    sizes += [vocab * h] * 2 + [h] * (2 * layers + 1)
    return sum(2 * n + 2 * 4 * math.ceil(n / block) for n in sizes)


def lora_state(spec, rank: int, bytes_per: int = 2) -> int:
    """LoRA (Hu et al., 2021): only the adapters A (r x in) and B (out x r) of each target train: AdamW's two
    moments of each and a 4-byte step per adapter tensor."""
    adapters = sum(rank * (m + n) for m, n in _matrices(spec))
    return bytes_per * 2 * adapters + 4 * 2 * len(_matrices(spec))


def _job(*overrides):
    return plan_for_gpu(list(overrides) + ["dataset=synthetic", "train.dtype=bf16", "train.seq_len=32",
                                           "train.batch_size=2"])[0].spec


CLOSED_FORMS = [
    ("galore", lambda spec: galore_state(spec, spec.method.optimizer["rank"])),
    ("apollo_mini", apollo_mini_state),
    ("adamw8bit", adamw8bit_state),
    ("lora", lambda spec: lora_state(spec, spec.method.transform_options["lora"]["rank"])),
]


@pytest.mark.parametrize(("method", "closed_form"), CLOSED_FORMS, ids=[m for m, _ in CLOSED_FORMS])
def test_traced_optimizer_state_is_the_closed_form(method, closed_form):
    spec = _job("model=llama_tiny", f"method={method}")
    assert estimate(spec).optimizer_state == closed_form(spec)


def _newest_row(model: str, method: str) -> dict:
    """The committed H100 row of (model, method) from the newest code that measured it: the quality sweep (code of
    8e67238), else methods_gpu. Older rows of GaLore and APOLLO-Mini kept the fused step's fp32 step counts in the
    optimizer state (76 bytes at 60m), which the current code makes per call instead."""
    for name in ("quality_60m", "methods_gpu"):
        path = ROWS.parents[1] / "h100" / f"{name}.rows.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found = [r for r in rows if r["model"] == model and r["method"] == method and r["status"] == "ok"]
        if found:
            return found[0]
    raise LookupError(f"no committed row of {model} {method}")


@pytest.mark.parametrize(("method", "closed_form"), CLOSED_FORMS, ids=[m for m, _ in CLOSED_FORMS])
def test_closed_form_is_the_gpu_rows_measured_state(method, closed_form):
    """The same closed forms at LLaMA-60m (the method's recipe rank) against the committed H100 rows' measured
    optimizer_state (storage bytes of the state tensors on the GPU)."""
    spec = _job("model=llama_60m", f"method={method}")
    assert closed_form(spec) == _newest_row("llama_60m", method)["optimizer_state"]


@pytest.mark.parametrize("method", ["adamw", "galore", "lora"])
def test_estimate_is_within_a_percent_of_committed_gpu_rows(method):
    """A subset of results/estimate_check.md (python -m harness.estimate_check recomputes all of it)."""
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    row = next(r for r in rows if r["model"] == "llama_60m" and r["method"] == method and r["status"] == "ok")
    from harness.estimate_check import spec_of

    assert abs(estimate(spec_of(row)).peak / row["peak_allocated"] - 1) <= 0.01


def kv_cache_bytes(spec, batch: int, tokens: int, bytes_per: int = 2) -> int:
    """A full KV cache: keys and values (2) of every layer, batch x KV heads x tokens x head size, in the model's
    dtype (LLaMA here: as many KV heads as attention heads)."""
    m = spec.model
    return 2 * m.num_hidden_layers * batch * m.num_attention_heads * tokens * (m.hidden_size // m.num_attention_heads) \
        * bytes_per


def test_traced_prefill_cache_is_the_closed_form():
    from harness.memtrace import trace_prefill

    spec = plan_for_gpu(["scenario=generate", "method=kv_full", "model=llama_tiny", "train.dtype=bf16"])[0].spec
    assert trace_prefill(spec, batch=3, prompt_len=40)["kv_cache_bytes"] == kv_cache_bytes(spec, 3, 40)


def test_the_fit_table_gives_each_gpu_the_largest_batch_whose_every_phase_fits():
    """`python -m harness.estimate -m method=a,b`: a line per job and a column per GPU of conf/gpu; its max batch is
    the largest b with peak_p(b) + (NVML − peak) within the budget for every phase p, each peak affine in the batch
    through the traces at batches 1 and 8 (the rule written plainly here), and b + 1 breaks it."""
    from harness.config import plan
    from harness.estimate import HEADROOM, fit_table, gpus

    jobs = plan(["-m", "model=llama_tiny", "method=adamw,sgd", "dataset=synthetic", "train.batch_size=8",
                 "train.seq_len=32", "run.device=cpu"])
    lines = fit_table(jobs).splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["method=adamw", "method=sgd"]
    def fits_all(e1, e8, b, budget):
        overhead = max(e1.nvml - e1.peak, e8.nvml - e8.peak)
        return all(p1["peak"] + (e8.phases[k]["peak"] - p1["peak"]) * (b - 1) / 7 + overhead <= budget
                   for k, p1 in e1.phases.items())

    for job, line in zip(jobs, lines[1:3], strict=True):
        e1, e8 = estimate(job.spec, 1), estimate(job.spec, 8)
        shown = [int(cell) for cell in line.replace(",", " ").split() if cell.isdigit()][1:]  # after the batch column
        for best, memory in zip(shown, gpus().values(), strict=True):
            budget = memory * (1 - HEADROOM)
            assert fits_all(e1, e8, best, budget) and not fits_all(e1, e8, best + 1, budget), (job.overrides, best)
