import json
import math

from harness.results import append_row, read_rows, write_json_atomic


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "s" / "rows.jsonl"
    append_row(path, {"run_id": "a", "peak_allocated": 123, "loss": float("nan")})
    append_row(path, {"run_id": "b", "peak_allocated": 2**40})
    rows = read_rows(path)
    assert [r["run_id"] for r in rows] == ["a", "b"]
    assert rows[0]["loss"] is None and rows[1]["peak_allocated"] == 2**40


def test_torn_last_line_is_reported_skipped_and_the_next_row_starts_clean(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    append_row(path, {"run_id": "a"})
    with open(path, "ab") as f:
        f.write(b'{"run_id": "torn", "peak_all')  # a writer killed mid-line (an older version)
    append_row(path, {"run_id": "c"})
    assert [r["run_id"] for r in read_rows(path)] == ["a", "c"]
    assert "skipped a malformed row" in capsys.readouterr().err


def test_write_json_atomic_leaves_no_temp_file(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"v": math.inf, "ok": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": None, "ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
