"""The KIVI benchmark writes its rows (bytes and error against the bf16 cache) on CPU."""


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    from harness.benches import bench_kivi, timing
    from harness.results import read_rows

    monkeypatch.setattr(timing, "PROJECT_ROOT", tmp_path)
    bench_kivi.main(["--tokens", "256", "--heads", "2", "--head-dim", "32", "--group", "64", "--repeats", "2",
                     "--device", "cpu"])
    rows = {r["variant"]: r for r in read_rows(tmp_path / "results" / "runs" / "kernels" / "kivi.rows.jsonl")}
    assert set(rows) == {"bf16_sdpa", "kivi_2bit", "kivi_4bit"}
    assert rows["kivi_2bit"]["bytes_over_bf16"] < rows["kivi_4bit"]["bytes_over_bf16"] < 0.5
    assert rows["kivi_4bit"]["mean_abs_error"] < rows["kivi_2bit"]["mean_abs_error"]
