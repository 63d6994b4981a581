"""Result rows: one JSON object per job, appended atomically to `<results_dir>/<sweep>/rows.jsonl`.

Append = one `write()` of one complete line on an O_APPEND descriptor, then fsync: concurrent writers never
interleave and a killed writer leaves at most a torn last line, which `read_rows` reports and skips.
Memory numbers are int bytes; non-finite floats are stored as null.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

STATUSES = ("ok", "oom", "timeout", "error", "diverged", "skipped", "interrupted")

# The row schema, in display order. Rows may carry more keys (per-phase peaks, package versions).
IDENTITY = ["run_id", "sweep", "repeat", "timestamp", "status", "error"]
CONFIG = ["model", "dataset", "method", "scenario", "gpu", "device", "dtype", "batch_size", "seq_len", "steps",
          "warmup_steps", "seed", "n_params", "n_trainable", "transforms", "optimizer", "overrides"]
MEMORY = ["weights", "grads", "optimizer_state", "activations", "activations_probe", "peak_allocated",
          "peak_reserved", "nvml_process_peak", "nvml_device_peak", "cpu_live_peak"]
SPEED = ["step_ms", "step_ms_p20", "step_ms_p80", "tokens_per_s", "mfu"]
QUALITY = ["train_loss", "eval_loss", "eval_ppl", "entropy_floor"]
PROVENANCE = ["git_sha", "git_dirty", "hostname", "python", "pkg_torch", "pkg_transformers", "pkg_triton",
              "cuda_version", "driver_version", "gpu_name", "gpu_memory_bytes", "pytorch_cuda_alloc_conf",
              "empty_cache_policy", "deterministic_fields"]
COLUMNS = IDENTITY + CONFIG + MEMORY + SPEED + QUALITY + PROVENANCE


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_clean(row), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn line from a killed writer: start ours on a fresh line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path, warn=True) -> list[dict]:
    """All well-formed rows of a rows.jsonl; malformed (torn) lines are reported on stderr and skipped."""
    rows = []
    if not path.exists():
        return rows
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or "run_id" not in row:
                    raise ValueError("not a row object")
                rows.append(row)
            except (ValueError, UnicodeDecodeError) as e:
                if warn:
                    print(f"warning: {path}:{number}: skipped a malformed row ({e})", file=sys.stderr)
    return rows


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(data), f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
