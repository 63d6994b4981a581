"""Benchmarks of the Triton kernels (kernels/): each times its kernel against the alternatives and appends result
rows with provenance to results/runs/kernels/<kernel>.rows.jsonl. Run one as `python -m harness.benches.bench_<kernel>`."""
