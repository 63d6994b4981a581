"""Where a row came from: code version (git sha + dirty), package / CUDA / driver versions, the GPU, the host."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess

from harness import PROJECT_ROOT

_PACKAGES = ("torch", "transformers", "triton", "datasets", "hydra-core", "bitsandbytes", "torchao", "galore-torch",
             "apollo-torch", "liger-kernel", "cut-cross-entropy", "peft")


def git_state() -> dict:
    """git sha and dirty flag of the project. MEMBENCH_GIT_SHA / MEMBENCH_GIT_DIRTY, when set, win: a copied tree on
    a GPU host may carry a stale .git (one such copy reported its older HEAD as dirty)."""
    if "MEMBENCH_GIT_SHA" in os.environ:
        dirty = os.environ.get("MEMBENCH_GIT_DIRTY")
        return {"git_sha": os.environ["MEMBENCH_GIT_SHA"],
                "git_dirty": None if dirty is None else dirty.lower() in ("1", "true", "yes")}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return {"git_sha": sha, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": None}


def host_state() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    return {"hostname": socket.gethostname(), "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            **{f"pkg_{k}": v for k, v in versions.items()}}


def cuda_state(device_index: int = 0) -> dict:
    """Versions and identity of the GPU; called in the job process (it initializes CUDA)."""
    import torch

    props = torch.cuda.get_device_properties(device_index)
    out = {"cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version(),
           "gpu_name": props.name, "gpu_memory_bytes": int(props.total_memory), "driver_version": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        out["driver_version"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML is optional: the row says None rather than failing the job
        pass
    return out
