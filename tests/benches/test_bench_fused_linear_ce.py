"""The fused linear cross-entropy benchmark writes a row for each variant on CPU."""


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    from harness.benches import bench_fused_linear_ce, timing
    from harness.results import read_rows

    monkeypatch.setattr(timing, "PROJECT_ROOT", tmp_path)
    bench_fused_linear_ce.main(["--tokens", "64", "--hidden", "16", "--vocab", "300", "--dtype", "fp32",
                                "--repeats", "2", "--device", "cpu"])
    rows = read_rows(tmp_path / "results" / "runs" / "kernels" / "fused_linear_ce.rows.jsonl")
    assert {r["variant"] for r in rows} == {"eager", "ours_memory", "ours_speed", "ours_memory_filtered"}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 and r["bound_bytes"] == (64 + 300) * 16 * 2 for r in rows)
