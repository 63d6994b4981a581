"""A fork server for job processes (run.launcher=fork). It imports torch, transformers and the harness once, never
touches CUDA, and forks one child per job: every job still runs in a fresh process of its own (its own CUDA
context, allocator and peak counters, nothing left over from an earlier job), but skips the imports, which on the
H100 host were ~14 s of a ~20 s LLaMA-60m job (startup_s + load_s in results/h100/methods_gpu.rows.jsonl).

Protocol, one JSON line each way over the server's stdin / stdout:
    ← {"ready": true}                                      once the imports are done
    → {"job_dir": ..., "log": ..., "env": {...}}           ← {"pid": N}   ← {"pid": N, "returncode": rc}
rc as subprocess reports it (negative: killed by that signal). The launcher side is harness.launch.Zygote.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback

from harness.nvml import visible_handle


@contextlib.contextmanager
def _cuda_init_caller(torch):
    """Yields a list that receives the Python stack of the first CUDA initialization inside the block."""
    original, callers = torch.cuda._lazy_init, []

    def recording():
        if not torch.cuda.is_initialized() and not callers:
            callers.append("".join(traceback.format_stack(limit=20)[:-1]))
        original()

    holders = [m for name, m in sys.modules.items() if name.startswith("torch.cuda") and m is not None
               and getattr(m, "_lazy_init", None) is original]
    for module in holders:
        module._lazy_init = recording
    try:
        yield callers
    finally:
        for module in holders:
            module._lazy_init = original


def _nvml_capability(device=None) -> tuple[int, int]:
    """torch.cuda.get_device_capability of the first visible GPU, read through NVML (no CUDA context)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = visible_handle(pynvml, 0)
        return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    finally:
        pynvml.nvmlShutdown()


@contextlib.contextmanager
def _device_queries_without_cuda(torch):
    """Imports ask about the GPU (seen on the H100 host: transformers imports torchao, whose import-time kernel
    choices call torch.cuda.get_device_capability() and torch's has_triton(), and both initialize CUDA). Inside
    the block the capability comes from NVML and has_triton() skips its device check; afterwards both are as
    before and has_triton() forgets its answer, so jobs see the real one."""
    import torch._inductor.config as inductor_config
    import torch.utils._triton

    capability = torch.cuda.get_device_capability
    torch.cuda.get_device_capability = _nvml_capability
    inductor_config.triton_disable_device_detection = True
    try:
        yield
    finally:
        torch.cuda.get_device_capability = capability
        inductor_config.triton_disable_device_detection = False
        torch.utils._triton.has_triton.cache_clear()


def _preload() -> None:
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # is_available() through NVML: no CUDA driver state to fork
    import torch

    with _device_queries_without_cuda(torch), _cuda_init_caller(torch) as callers:
        import transformers  # noqa: F401
        from transformers import LlamaForCausalLM  # noqa: F401  (the lazy module imports its heavy parts here)

        import harness.worker  # noqa: F401
        import methods  # noqa: F401
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialized while preloading; a forked job could not use it. First caller:\n"
                           + (callers[0] if callers else "(not through torch.cuda._lazy_init)"))
    if torch.cuda.is_available():  # a library may have initialized the driver behind torch's back: try it
        pid = os.fork()
        if pid == 0:
            try:
                torch.zeros(1, device="cuda")
                torch.cuda.synchronize()
                os._exit(0)
            except BaseException:
                os._exit(1)
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            raise RuntimeError("a child forked after the imports cannot use CUDA")


def _send(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _run_child(request: dict, server: int) -> None:
    """In the forked child: become a job process (own session, log as stdout/stderr) and run the worker."""
    code = 1
    try:
        from harness.launch import _die_with_parent

        _die_with_parent()
        if os.getppid() != server:  # the server died before the line above: no signal will come, so no job
            os._exit(1)
        os.setsid()  # the launcher kills the job's whole process group on timeout
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the server's request pipe is not the job's business
        os.environ.clear()  # exactly the launcher's environment at the job's start, as a spawned job would get
        os.environ.update(request["env"])
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = ["harness.worker", request["job_dir"]]
        from harness import worker

        worker.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    replies = sys.stdout
    sys.stdout = sys.stderr  # anything the imports print must not corrupt the protocol
    _preload()
    _send(replies, {"ready": True})
    server = os.getpid()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request, server)
        _send(replies, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(replies, {"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
