"""The job process: `python -m harness.worker <job_dir>` reads job.json, runs the job, writes result.json.

Every outcome it can see becomes a status (ok, oom, diverged, skipped, error); outcomes it cannot see (a segfault,
a kill, a hang) are turned into rows by the parent (harness.launch).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from harness import checkpoints, distributed, fits
from harness.finetune import run_finetune
from harness.infer import run_generate
from harness.provenance import cuda_state, host_state
from harness.ranks import RANK_RESULT
from harness.results import write_json_atomic
from harness.schema import JobSpec
from harness.train import Diverged, run_training
from methods import MissingRequirement

# What a job does, by its scenario's kind (conf/scenario/*.yaml `kind:`): each runner fills the record in place.
RUNNERS = {"train": run_training, "finetune": run_finetune, "generate": run_generate}


def one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:limit]


def _resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", distributed.rank_env()[2])  # a rank of several takes the GPU of its local rank
    torch.cuda.set_device(device)
    return device


def _gpu_figures(spec: JobSpec, record: dict) -> None:
    """The datasheet figures used for MFU: the job's own gpu section (its YAML with the command line's gpu.*
    overrides). gpu=auto: the conf/gpu/*.yaml whose card matches the NVML name fills what the section leaves null."""
    from omegaconf import OmegaConf

    from harness import CONF_DIR

    name, peak = spec.gpu.name, spec.gpu.peak_bf16_flops
    if name == "auto":
        label = (record.get("gpu_name") or "").lower()
        candidates = {"h200": "h200", "h100": "h100", "a100": "a100_80gb", "4090": "rtx4090", " l4": "l4"}
        name = next((v for k, v in candidates.items() if k in f" {label}"), "unknown")
        if peak is None and name != "unknown":
            peak = OmegaConf.load(CONF_DIR / "gpu" / f"{name}.yaml").peak_bf16_flops
    record.update(gpu=name, gpu_peak_bf16_flops=peak)


def _fault_injector(kind: str):
    """Failure drills (run.inject_fault) so the runner's handling of each failure is tested for real."""
    def inject(stage: str, model) -> None:
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 TiB (injected by run.inject_fault)")
        if kind == "segfault":
            ctypes.string_at(0)
        if kind == "kill":  # what the kernel's OOM killer or an operator's kill -9 does
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "hang":
            time.sleep(10**6)
        if kind == "missing_package":
            from methods import require

            require("membench_absent_package_drill", "run.inject_fault=missing_package")
        if kind == "nan_loss":
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    return inject


def execute(job_dir: Path) -> dict:
    job = json.loads((job_dir / "job.json").read_text())
    record: dict = {"status": "ok", "error": None, "empty_cache_policy": "never inside a job"}
    limit = None, "no limit on the host memory of a GPU job"
    try:
        spec = JobSpec.from_dict(job["config"])
        record.update(host_state())
        device = _resolve_device(spec.run.device)
        record["device"] = device.type
        if device.type == "cuda":
            record.update(cuda_state(device.index))
            _gpu_figures(spec, record)
        else:
            record["gpu"] = "cpu"
            limit = fits.limit_process(spec.run.host_memory_limit_gib, spec.run.parallel)
            record["host_memory_limit"] = limit[0]
        if "MEMBENCH_LAUNCHED_AT" in os.environ:
            record["startup_s"] = time.time() - float(os.environ["MEMBENCH_LAUNCHED_AT"])
        if spec.train.save_checkpoint:  # the runner saves the model there (harness/checkpoints.py)
            record["checkpoint_path"] = str(checkpoints.folder_of(job_dir.absolute()))
        distributed.init(spec, device)
        faulty = spec.run.inject_fault_rank in (None, distributed.world()[0])
        RUNNERS[spec.scenario.kind](spec, device, record, _fault_injector(spec.run.inject_fault if faulty else "none"))
    except MissingRequirement as e:
        record.update(status="skipped", error=one_line(e))
    except torch.OutOfMemoryError as e:
        record.update(status="oom", error=one_line(e))
    except Diverged as e:
        record.update(status="diverged", error=one_line(e))
    except Exception as e:  # every other failure becomes a row, with the traceback in the job's log
        traceback.print_exc()
        if fits.allocation_failed(e):
            record.update(status="oom", error=f"{fits.oom_reason(*limit)}: {one_line(e)}"[:400])
        else:
            record.update(status="error", error=one_line(e))
    return record


def main() -> None:
    job_dir = Path(sys.argv[1])
    ranked = "TORCHELASTIC_RUN_ID" in os.environ  # one rank of several, started by torchrun (harness/ranks.py)
    if ranked:
        from harness.launch import _die_with_parent

        _die_with_parent()  # torchrun starts each rank with setsid: a killed torchrun must still take them down
    record = execute(job_dir)
    if ranked:
        record["ended_at"] = time.time()  # the rank that failed first is the job's cause (harness/ranks.py)
    name = RANK_RESULT.format(distributed.rank_env()[0]) if ranked else "result.json"
    write_json_atomic(job_dir / name, record)
    print(f"status={record['status']}" + (f" error={record['error']}" if record["error"] else ""), flush=True)
    if ranked and record["status"] != "ok":
        sys.exit(1)  # torchrun then stops the other ranks, which may be waiting for this one in a collective
    distributed.shutdown()


if __name__ == "__main__":
    main()
