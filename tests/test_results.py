import errno
import json
import math
import os

import pytest

from harness import results
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


class _FullDisk:
    """The os module as harness.results sees it, on a disk that fills up: the first write lands half, the rest fail
    (ENOSPC), as does fsync."""

    def __init__(self, code=errno.ENOSPC):
        self.code, self.writes = code, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _fail(self):
        raise OSError(self.code, os.strerror(self.code))

    def write(self, fd, data):
        self.writes += 1
        if self.writes > 1:
            self._fail()
        return os.write(fd, data[: len(data) // 2])

    def fsync(self, fd):
        self._fail()


def test_an_append_that_fills_the_disk_leaves_the_rows_as_they_were(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    append_row(path, {"run_id": "a"})
    before = path.read_bytes()
    monkeypatch.setattr(results, "os", _FullDisk())
    with pytest.raises(OSError) as info:
        append_row(path, {"run_id": "b", "pad": "x" * 1000})
    assert info.value.errno == errno.ENOSPC and path.read_bytes() == before


def test_a_first_append_that_fails_leaves_no_empty_rows_file(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "os", _FullDisk())
    with pytest.raises(OSError):
        append_row(tmp_path / "rows.jsonl", {"run_id": "a"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, code):
    write_json_atomic(tmp_path / "row.json", {"v": 1})
    monkeypatch.setattr(results, "os", _FullDisk(code))
    with pytest.raises(OSError) as info:
        write_json_atomic(tmp_path / "row.json", {"v": 2})
    assert info.value.errno == code
    assert [p.name for p in tmp_path.iterdir()] == ["row.json"]
    assert json.loads((tmp_path / "row.json").read_text()) == {"v": 1}
