"""Derived figures against their formulas written out plainly, with numbers worked by hand: MFU (and the FLOPs per
token it rests on), the NVML sampler's peaks (a scripted fake pynvml: no GPU needed) and the learning-rate schedule
a job applies (linear warm-up, then cosine to 10 %)."""
import json
import math
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from harness import PROJECT_ROOT
from harness.config import plan
from harness.models import build_model, flops_per_token
from harness.probes import NvmlSampler
from harness.results import read_rows
from harness.worker import execute
from tests.helpers import FAST

# FLOPs per trained token = 6·N + 12·L·d·S (N: weights of the matrix products, embedding excluded; L layers, width d,
# S tokens of context). Per LLaMA layer N counts q, k, v, o (4·d²) and gate, up, down (3·d·d_ff); plus the head V·d.
#   llama_tiny, S = 64:   N = 2·(4·64² + 3·64·172) + 1024·64 = 164_352;   6N + 12·2·64·64 = 1_084_416
#   llama_60m, S = 256:   N = 8·(4·512² + 3·512·1376) + 32000·512 = 41_680_896;   6N + 12·8·512·256 = 262_668_288
#   llama_1b, S = 256:    N = 24·(4·2048² + 3·2048·5461) + 32000·2048 = 1_273_446_400;   6N + 12·24·2048·256
#                         = 7_791_673_344
HAND_FLOPS = {("llama_tiny", 64): 1_084_416, ("llama_60m", 256): 262_668_288, ("llama_1b", 256): 7_791_673_344}
H100_BF16_PEAK = 989.4e12  # dense bf16, NVIDIA's H100 SXM5 datasheet (conf/gpu/h100.yaml)


def test_flops_per_token_of_the_tiny_model_is_the_hand_count():
    (job,) = plan(["model=llama_tiny", "run.results_dir=unused"])
    model = build_model(job.spec.model, torch.float32, torch.device("cpu"))
    assert flops_per_token(model, 64) == HAND_FLOPS[("llama_tiny", 64)]


def test_committed_h100_rows_give_mfu_by_the_formula():
    """MFU = tokens/s × FLOPs per token / the GPU's datasheet peak, for the H100 AdamW rows (a CPU job has no MFU)."""
    rows = [r for r in read_rows(PROJECT_ROOT / "results" / "h100" / "methods_gpu.rows.jsonl")
            if r["status"] == "ok" and r["method"] == "adamw" and (r["model"], r["seq_len"]) in HAND_FLOPS]
    assert {r["model"] for r in rows} == {"llama_60m", "llama_1b"}
    for r in rows:
        tokens_per_s = r["batch_size"] * r["seq_len"] / (r["step_ms"] / 1000)
        assert r["tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-12)
        assert r["flops_per_token"] == HAND_FLOPS[(r["model"], r["seq_len"])]
        assert r["mfu"] == pytest.approx(tokens_per_s * HAND_FLOPS[(r["model"], r["seq_len"])] / H100_BF16_PEAK,
                                         rel=1e-12)
    # e.g. the first 60m row: 8·256 tokens in 26.084 ms = 78_515 tokens/s; × 262_668_288 / 989.4e12 = 2.08 %
    assert rows[0]["mfu"] == pytest.approx(0.0208, abs=5e-5)


class ScriptedNvml:
    """pynvml stand-in for one GPU: each sample reads the next device-used and process values of a script (the last
    again once it runs out); another process on the GPU holds more than ours, and must not count."""

    def __init__(self, device_used: list[int], ours: list[int | None]):
        self.device_used, self.ours, self.calls, self.lock = device_used, ours, 0, threading.Lock()

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        with self.lock:
            self.calls += 1
            return SimpleNamespace(used=self.device_used[min(self.calls, len(self.device_used)) - 1])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        value = self.ours[min(self.calls, len(self.ours)) - 1]
        return [SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=10**12),
                SimpleNamespace(pid=os.getpid(), usedGpuMemory=value)]


def test_nvml_sampler_keeps_the_peaks_and_its_thread_stops(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = ScriptedNvml(device_used=[3_000, 9_000, 5_000, 4_000], ours=[1_000, None, 7_000, 2_000])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = NvmlSampler(0, interval_s=0.001).start()
    deadline = time.monotonic() + 10
    while fake.calls < 4 and time.monotonic() < deadline:  # the whole script has been read
        time.sleep(0.001)
    figures = sampler.stop()
    assert not sampler._thread.is_alive()
    calls = fake.calls
    time.sleep(0.05)  # fifty intervals
    assert fake.calls == calls, "the sampler kept polling after stop()"
    assert figures == {"nvml_process_peak": 7_000, "nvml_device_peak": 9_000, "nvml_samples": calls}


def _lr(step: int, warm: int, total: int) -> float:
    """Linear warm-up to 1 over `warm` steps, then cosine from 1 down to 0.1 at `total` (GaLore's schedule)."""
    if step < warm:
        return (step + 1) / warm
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def test_cosine_schedule_with_warmup_is_what_the_optimizer_gets(results_dir, monkeypatch):
    seen = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    fast = [a for a in FAST if not a.startswith("train.steps")]
    (job,) = plan(["method=adamw", "method.optimizer.lr=0.002", "train.steps=20", "train.lr_schedule=cosine",
                   "train.lr_warmup_steps=4", f"run.results_dir={results_dir}", *fast])
    job.job_dir.mkdir(parents=True)
    (job.job_dir / "job.json").write_text(json.dumps({"run_id": job.run_id, "repeat": 0, "config": job.config}))
    assert execute(job.job_dir)["status"] == "ok"
    assert seen == pytest.approx([0.002 * _lr(step, 4, 20) for step in range(20)], rel=1e-12)
    # by hand: start 1/4; end of warm-up (step 3) 4/4; first cosine step 1; middle (step 12, progress 8/16)
    # 0.1 + 0.45·(1 + cos π/2) = 0.55; last step (19, progress 15/16) 0.1 + 0.45·(1 + cos 15π/16) = 0.108647
    for step, factor in [(0, 0.25), (3, 1.0), (4, 1.0), (12, 0.55), (19, 0.108647)]:
        assert seen[step] == pytest.approx(0.002 * factor, rel=1e-5), step
