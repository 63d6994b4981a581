"""The 8-bit AdamW benchmark writes its rows on CPU, and with --profile prints tables instead."""


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    from harness.benches import bench_adamw8bit, timing
    from harness.results import read_rows

    monkeypatch.setattr(timing, "PROJECT_ROOT", tmp_path)
    bench_adamw8bit.main(["--model", "llama_tiny", "--repeats", "2", "--dtype", "fp32"])
    rows = {r["variant"]: r for r in read_rows(tmp_path / "results" / "runs" / "kernels" / "adamw8bit.rows.jsonl")}
    assert rows["torch_adamw_fused"]["ratio_to_torch_fused"] == 1.0
    ours = rows["ours_adamw8bit"]
    assert ours["status"] == "ok" and 2.0 < ours["state_bytes_per_param"] <= 2.05


def test_benchmark_profile_prints_tables_and_writes_no_rows(tmp_path, monkeypatch, capsys):
    from harness.benches import bench_adamw8bit, timing

    monkeypatch.setattr(timing, "PROJECT_ROOT", tmp_path)
    bench_adamw8bit.main(["--model", "llama_tiny", "--dtype", "fp32", "--profile", "torch_adamw_fused"])
    out = capsys.readouterr().out
    assert "--- torch_adamw_fused" in out and "aten::" in out and "--- ours_adamw8bit" not in out
    assert not (tmp_path / "results").exists()
