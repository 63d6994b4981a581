"""NVML handles of the GPUs this process may use, in CUDA's numbering.

NVML numbers every GPU of the host and ignores CUDA_VISIBLE_DEVICES; CUDA numbers only the visible ones. Two sweeps
pinned to two GPUs of one host (CUDA_VISIBLE_DEVICES=0 and =1) must narrow NVML's view the same way, or each would
sample the memory of, and see as a busy occupant, the other's GPU. The order assumed is NVML's (PCI bus), which is
CUDA's on hosts of identical GPUs or with CUDA_DEVICE_ORDER=PCI_BUS_ID.
"""
from __future__ import annotations

import os


def visible_handles(pynvml) -> list:
    """Handles for CUDA devices 0, 1, … of this process (pynvml already initialized). Like CUDA, the list stops at
    the first entry of CUDA_VISIBLE_DEVICES that names no GPU; entries are indices or UUIDs ("GPU-…")."""
    count = int(pynvml.nvmlDeviceGetCount())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) < count:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
        elif entry.startswith("GPU-"):
            try:
                handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
            except pynvml.NVMLError:
                break
        else:
            break
    return handles


def visible_handle(pynvml, device_index: int):
    """The handle of CUDA device `device_index`; IndexError when that device is not visible."""
    handles = visible_handles(pynvml)
    if device_index >= len(handles):
        raise IndexError(f"CUDA device {device_index} is not among the {len(handles)} visible GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return handles[device_index]
