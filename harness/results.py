"""Result rows: one JSON object per job, appended atomically to `<results_dir>/<sweep>/rows.jsonl`.

Append = one `write()` of one complete line on an O_APPEND descriptor, then fsync: concurrent writers never
interleave and a killed writer leaves at most a torn last line, which `read_rows` reports and skips. A write that
fails (a full disk, a folder turned read-only) is cut back off, and a failed atomic write leaves no temp file: the
rows already written stay as they were. One sweep at a time writes a sweep folder (`sweep_lock`).
Memory numbers are int bytes; non-finite floats are stored as null.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import sys
from contextlib import contextmanager
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
        try:
            while line:  # a short write (a disk filling up) goes on until the rest is written or fails with a reason
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError:
            _undo_append(fd, path, size)
            raise
    finally:
        os.close(fd)


def _undo_append(fd: int, path: Path, size: int) -> None:
    """Cut a failed append back off (the sweep's lock keeps other writers out); a file it created goes again."""
    try:
        if size:
            os.ftruncate(fd, size)
        else:
            path.unlink()
    except OSError:  # a read-only file system refuses this too; read_rows skips a torn last line
        pass


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
    """`path` holds the whole of `data` or what it held before, never a part; no temp file is left either way."""
    text = json.dumps(_clean(data), indent=1, allow_nan=False)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class SweepRefused(RuntimeError):
    """The sweep cannot start on its folder: the folder cannot be created, or another sweep holds it."""


@contextmanager
def sweep_lock(sweep_dir: Path):
    """Create the sweep folder and hold its lock (`<sweep_dir>/.lock`, which names the holder's PID) while the block
    runs; raise SweepRefused where it cannot. flock is released by the kernel when its holder dies, so a killed sweep
    leaves no stale lock, and the descriptor is not inherited by the job processes."""
    lock_path = sweep_dir / ".lock"
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SweepRefused(f"cannot create the sweep folder {sweep_dir}: {describe(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SweepRefused(f"sweep folder {sweep_dir} is in use by another sweep (PID {holder} holds "
                               f"{lock_path}); wait for it to end, or pick another sweep.name or run.results_dir"
                               ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise SweepRefused(f"cannot write in the sweep folder {sweep_dir}: {describe(e)}") from None
        yield
    finally:
        os.close(fd)


def describe(error: OSError) -> str:
    """An OSError as a phrase: what went wrong and on which path (no errno number)."""
    return f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
