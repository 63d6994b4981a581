"""scenario=generate in reports: fidelity verdicts, the table, the plots, and the console table."""
import pandas as pd

from harness import generate_report
from harness.verdict import fidelity_verdict


def _row(method, top1, ppl, batch=1, budget=None, **extra):
    return {"run_id": method + str(batch), "model": "llama_tiny", "method": method, "transforms": [], "status": "ok",
            "cache": "full" if method == "kv_full" else method, "batch_size": batch, "memory_budget": budget,
            "peak_allocated": 2**30 + batch * 2**20, "kv_cache_bytes": batch * 2**20, "decode_tokens_per_s": 100.0,
            "fidelity_ppl": ppl, "fidelity_ppl_full": 10.0, "fidelity_top1": top1, "fidelity_kl": 0.01, **extra}


def test_a_collapsed_cache_is_no_trade_off():
    assert fidelity_verdict(_row("window_only", 0.2, 5158.0))[0] == "collapsed"
    assert fidelity_verdict(_row("window_only", 0.95, float("inf")))[0] == "collapsed"
    assert fidelity_verdict(_row("kivi2", 0.85, 10.2))[0] == "degraded"
    assert fidelity_verdict(_row("kivi2", 0.99, 10.8))[0] == "degraded"
    assert fidelity_verdict(_row("kivi4", 0.99, 10.1))[0] == "faithful"
    assert fidelity_verdict({"status": "ok"}) == (None, None)  # no fidelity measured
    assert fidelity_verdict({**_row("kivi4", 0.99, 10.1), "status": "oom"}) == (None, None)


def test_table_plots_and_console(tmp_path):
    rows = [_row("kv_full", 1.0, 10.0), _row("kivi2", 0.97, 10.8), _row("window_only", 0.3, 900.0),
            _row("kv_full", None, None, batch=4, budget=8 * 2**30), _row("kivi2", None, None, batch=30, budget=8 * 2**30),
            {"run_id": "train", "model": "llama_tiny", "method": "adamw", "status": "ok"}]
    lines = generate_report.table(pd.DataFrame(rows))
    assert list(lines["method"]) == ["kv_full", "kivi2", "window_only", "kv_full", "kivi2"]
    assert list(lines["fidelity_verdict"][:3]) == ["faithful", "degraded", "collapsed"]
    assert "| window_only |" in generate_report.markdown(lines)
    written = generate_report.plots(lines, tmp_path)
    assert {p.name for p in written} == {"fidelity_vs_memory.png", "fidelity_vs_throughput.png", "max_batch.png"}
    assert all(p.stat().st_size > 0 for p in written)
    text = generate_report.console(rows)
    assert text.count("\n") == 7 and "adamw" not in text
