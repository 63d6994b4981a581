"""Does a job fit the memory it runs in. Planning refuses a LLaMA whose weights alone (a certain lower bound,
nothing built) exceed the host memory limit of a CPU job or the named GPU's gpu.memory_bytes.

The host memory guard of CPU jobs (run.host_memory_limit_gib): a job that would not fit in the machine's RAM
ends alone, as an `oom` row, instead of growing until the kernel's OOM killer picks a victim machine-wide:
the job process limits its own data segment with RLIMIT_DATA (private writable memory: heap and anonymous maps,
what tensors live in), so an allocation past the limit fails inside the job, where the worker turns it into a row.
RLIMIT_AS would also count address space reserved but never filled (thread stacks, malloc arenas), and CUDA
reserves far more of it than any host has, hence CPU jobs only.
"""
from __future__ import annotations

import resource
from pathlib import Path

GIB = 2**30
# run.host_memory_limit_gib=auto: this share of the memory available when the job starts; the rest is left to the
# launcher, to the other processes of the machine and to the page cache.
AUTO_SHARE = 0.8
_CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: memory.max / memory.current of a container


def available_bytes() -> int | None:
    """Memory this process could still get: the kernel's MemAvailable, or less where the cgroup's limit says so;
    None where neither can be read (not Linux)."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        cap = (_CGROUP / "memory.max").read_text().strip()
        if cap != "max":
            available = min(available, int(cap) - int((_CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):  # no cgroup v2 memory controller here: MemAvailable is the bound
        pass
    return available


def limit_of(setting, side_by_side: int = 1) -> tuple[int | None, str]:
    """(limit in bytes or None, how it was set) for run.host_memory_limit_gib = auto | null | a number of GiB; auto
    splits its share among the `side_by_side` jobs a sweep runs at once (run.parallel), which would otherwise each
    claim most of the same memory."""
    if setting is None:
        return None, "run.host_memory_limit_gib=null: no limit"
    if setting != "auto":
        return int(setting * GIB), f"run.host_memory_limit_gib={setting:g}"
    available = available_bytes()
    if available is None:
        return None, "run.host_memory_limit_gib=auto: the available memory cannot be read here, no limit"
    shared = f" / {side_by_side} jobs side by side" if side_by_side > 1 else ""
    return int(AUTO_SHARE * available / side_by_side), (f"run.host_memory_limit_gib=auto: {AUTO_SHARE:.0%} of the "
                                                        f"{available / GIB:.1f} GiB available{shared}")


def limit_process(setting, side_by_side: int = 1) -> tuple[int | None, str]:
    """In the job process: apply the limit to this process's data segment; returns limit_of(...)."""
    limit, how = limit_of(setting, side_by_side)
    if limit is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    return limit, how


def allocation_failed(error: BaseException) -> bool:
    """A host allocation was refused: Python's MemoryError (numpy's too) or torch's CPU allocator, which raises a
    plain RuntimeError."""
    return isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error)


def oom_reason(limit: int | None, how: str) -> str:
    if limit is None:
        return f"host memory ran out ({how})"
    return f"host memory limit of {limit / GIB:.1f} GiB reached ({how})"


def llama_weight_count(model) -> int:
    """Parameters of a LLaMA spec (untied head, no biases): embedding and head, per layer the four attention and
    three MLP matrices and two norms, and the final norm."""
    h, i = model.hidden_size, model.intermediate_size
    return 2 * model.vocab_size * h + model.num_hidden_layers * (4 * h * h + 3 * h * i + 2 * h) + h


BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "fp16": 2}


def check_weights_fit(spec, on_cpu: bool) -> None:
    """Planning: refuse a LLaMA whose weights alone exceed the host memory limit (a CPU job) or gpu.memory_bytes (a
    GPU job on a named GPU). The model is built in train.dtype before any transform quantizes it, and gradients,
    optimizer state and activations only add to it; train.dtype=auto counts the fewest bytes it may mean (fp32 on
    CPU, bf16 on a GPU that has it: harness.train.resolve_dtype)."""
    from harness.schema import ConfigError, LlamaSpec

    if on_cpu:
        limit, how = limit_of(spec.run.host_memory_limit_gib)
        where, advice = f"the host memory limit of a CPU job ({how})", "pick a smaller model or run it on a GPU"
    else:
        limit, where = spec.gpu.memory_bytes, f"gpu.memory_bytes of gpu={spec.gpu.name}"
        advice = "pick a smaller model or a larger GPU"
    if limit is None or not isinstance(spec.model, LlamaSpec):
        return
    count = llama_weight_count(spec.model)
    need = count * BYTES_PER_WEIGHT.get(spec.train.dtype, 4 if on_cpu else 2)
    if need > limit:
        raise ConfigError(f"model {spec.model.name}'s weights alone take {need / GIB:.1f} GiB "
                          f"({count / 1e9:.2f} B parameters, train.dtype={spec.train.dtype}), over the "
                          f"{limit / GIB:.1f} GiB of {where}; {advice}")
