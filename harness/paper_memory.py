"""The memory columns of the GaLore and APOLLO papers' Table 2 (weights + optimizer states, LLaMA 60M-1B), from the
estimator, beside the papers' numbers: `python -m harness.paper_memory` prints the Markdown table of
docs/estimator.md.

Papers (each quoted number is "G" as printed, with its column: 60M, 130M, 350M, 1B):
- GaLore (Zhao et al., 2024, arXiv 2403.03507), Table 2: "a memory estimate of the total of parameters and optimizer
  states based on BF16 format", ranks r / d_model = 128/256 (sic, 512), 256/768, 256/1024, 512/2048.
- APOLLO (Zhu et al., 2025, arXiv 2412.05270), Table 2: "The memory overhead focus solely on weights and optimization
  states"; its AdamW, Low-Rank, LoRA and GaLore rows are GaLore's; APOLLO at GaLore's ranks, APOLLO† at half of
  them, APOLLO-Mini at rank 1.
Each of our rows is the estimate of the job `model=<m> method=<ours> <overrides>` (the method's per-model recipe
gives the paper's rank): weights + optimizer state bytes after one step, in GB (10^9 B, as the papers' G reads
when it is reproduced from nominal parameter counts) and GiB.
"""
from __future__ import annotations

import sys

MODELS = ("llama_60m", "llama_130m", "llama_350m", "llama_1b")
# (paper label, our method, extra overrides, GaLore Table 2 memory, APOLLO Table 2 memory): GB as printed
ROWS = [
    ("Full-Rank / AdamW", "adamw", (), (0.36, 0.76, 2.06, 7.80), (0.36, 0.76, 2.06, 7.80)),
    ("GaLore", "galore", (), (0.24, 0.52, 1.22, 4.38), (0.24, 0.52, 1.22, 4.38)),
    ("Low-Rank", "lowrank_pretrain", (), (0.26, 0.54, 1.08, 3.57), (0.26, 0.54, 1.08, 3.57)),
    ("LoRA", "lora_pretrain", (), (0.36, 0.80, 1.76, 6.17), (0.36, 0.80, 1.76, 6.17)),
    ("Fira", "fira", (), None, (0.24, 0.52, 1.22, 4.38)),
    ("APOLLO", "apollo", (), None, (0.24, 0.52, 1.22, 4.38)),
    ("APOLLO† (half rank)", "apollo", ("half_rank",), None, (0.18, 0.39, 0.95, 3.49)),
    ("APOLLO-Mini", "apollo_mini", (), None, (0.12, 0.25, 0.69, 2.60)),
]
SHAPE = ("train.batch_size=1", "train.seq_len=64", "train.dtype=bf16", "dataset=synthetic")


def _job(model: str, method: str, extra: tuple):
    from harness.estimate import plan_for_gpu

    job = plan_for_gpu([f"model={model}", f"method={method}", *SHAPE])[0]
    if "half_rank" in extra:
        rank = job.spec.method.optimizer["rank"]
        job = plan_for_gpu([f"model={model}", f"method={method}", *SHAPE, f"method.optimizer.rank={rank // 2}"])[0]
    return job


def measure() -> list[dict]:
    from harness.estimate import estimate

    out = []
    for label, method, extra, galore, apollo in ROWS:
        for i, model in enumerate(MODELS):
            job = _job(model, method, extra)
            est = estimate(job.spec)
            options = [job.spec.method.optimizer, *job.spec.method.transform_options.values()]
            rank = next((o["rank"] for o in options if isinstance(o, dict) and "rank" in o), None)
            out.append({"label": label, "method": method, "model": model, "rank": rank,
                        "bytes": est.weights + est.optimizer_state, "weights": est.weights,
                        "state": est.optimizer_state, "galore": galore[i] if galore else None,
                        "apollo": apollo[i] if apollo else None})
            print(f"{label} {model}: {(est.weights + est.optimizer_state) / 1e9:.3f} GB", file=sys.stderr)
    return out


def markdown(lines: list[dict]) -> str:
    head = ("| paper row | ours | model | rank | weights + state, GB (GiB) | GaLore Table 2 | APOLLO Table 2 | "
            "ours / paper |\n|---|---|---|---|---|---|---|---|")
    body = []
    for line in lines:
        paper = line["apollo"] or line["galore"]
        gb = line["bytes"] / 1e9
        body.append(f"| {line['label']} | {line['method']} | {line['model']} | {line['rank'] or '-'} | {gb:.3f} "
                    f"({line['bytes'] / 2**30:.3f}) | {line['galore'] or '-'} | {line['apollo'] or '-'} | "
                    f"{gb / paper:.2f} |")
    return head + "\n" + "\n".join(body) + "\n"


def main() -> int:
    print(markdown(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
