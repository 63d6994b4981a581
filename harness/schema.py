"""Validated, typed views of the composed config: each group becomes a small frozen dataclass, parsed by
harness/parse.py (the dataset group's specs: harness/data_specs.py)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from harness.data_specs import DATASET_KINDS, HubDataSpec, SyntheticSpec, TaskSpec, TextSpec  # noqa: F401 (re-exported)
from harness.parse import SEEDS, ConfigError, _check_seed, _describe, parse  # noqa: F401 (re-exported)

Dtype = Literal["auto", "fp32", "bf16", "fp16"]
Distributed = Literal["none", "ddp", "zero1", "fsdp2_zero2", "fsdp2"]  # harness/distributed.py STRATEGIES


@dataclass(frozen=True)
class TrainSpec:
    batch_size: int | Literal["auto"]  # auto: the largest batch that runs on the job's GPU (harness/autobatch.py)
    seq_len: int
    steps: int
    warmup_steps: int
    eval_batches: int
    dtype: Dtype
    seed: int
    lr_schedule: Literal["constant", "cosine"]
    lr_warmup_steps: int
    lr_warmup_fraction: float | None = None  # of train.steps; planning turns it into lr_warmup_steps (recipes.py)
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step, gradients summed (harness/distributed.py)
    distributed: Distributed = "none"  # how run.nproc ranks share the job (harness/distributed.py)
    save_checkpoint: bool = False  # save the trained model (save_pretrained) in the job's folder (harness/checkpoints.py)
    memory_budget_gib: float | None = None  # batch_size=auto: allocated peak allowed (null: what the GPU holds)

    def check(self) -> None:
        if self.batch_size == "auto" and self.memory_budget_gib is not None and self.memory_budget_gib <= 0:
            raise ConfigError(f"train.memory_budget_gib={self.memory_budget_gib} is invalid; it must be > 0 or null")
        sized = (("batch_size", 1),) if self.batch_size != "auto" else ()
        for name, low in sized + (("seq_len", 2), ("steps", 2), ("warmup_steps", 1), ("eval_batches", 0),
                                  ("lr_warmup_steps", 0), ("grad_accum", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"train.{name}={getattr(self, name)} is invalid; it must be >= {low}")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be < train.steps={self.steps} "
                              "(at least one timed step)")
        if self.lr_warmup_steps > self.steps:
            raise ConfigError(f"train.lr_warmup_steps={self.lr_warmup_steps} must be <= train.steps={self.steps} "
                              "(else the learning rate never reaches method.optimizer.lr)")
        if self.lr_warmup_fraction is not None and not 0 <= self.lr_warmup_fraction <= 1:
            raise ConfigError(f"train.lr_warmup_fraction={self.lr_warmup_fraction} is invalid; it must be in [0, 1] "
                              "(a fraction of train.steps) or null")
        _check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class RunSpec:
    device: Literal["auto", "cpu", "cuda"]
    repeats: int
    timeout_s: float
    force: bool
    retry_failed: bool
    results_dir: str
    busy_gpu: Literal["flag", "refuse", "ignore"]
    live_tensor_probe: bool
    nvml_interval_ms: int
    inject_fault: Literal["none", "raise", "oom", "segfault", "kill", "hang", "nan_loss", "missing_package"]
    launcher: Literal["fork", "spawn"]
    host_memory_limit_gib: float | Literal["auto"] | None  # CPU jobs (harness/fits.py)
    parallel: int = 1  # jobs of a sweep running at once (harness/run.py); > 1: their timings are not comparable
    nproc: int = 1  # ranks of one job on one node, started by torchrun (harness/distributed.py)
    inject_fault_rank: int | None = None  # the rank that injects run.inject_fault (null: every rank)
    resume_from: list[str] | None = None  # rows files (e.g. committed ones) whose rows count as this sweep's own
    estimate: bool = True  # trace the job's memory estimate before it runs (harness/estimate.py): seconds of CPU

    def check(self) -> None:
        limit = self.host_memory_limit_gib
        if limit not in ("auto", None) and not 0 < limit < float("inf"):
            raise ConfigError(f"run.host_memory_limit_gib={limit} is invalid; allowed: auto, null or a number of "
                              "GiB > 0")
        if self.parallel < 1:
            raise ConfigError(f"run.parallel={self.parallel} is invalid; it must be >= 1 (jobs at once)")
        if self.repeats < 1:
            raise ConfigError(f"run.repeats={self.repeats} is invalid; it must be >= 1")
        if self.nproc < 1:
            raise ConfigError(f"run.nproc={self.nproc} is invalid; it must be >= 1 (ranks of one job)")
        if self.inject_fault_rank is not None and not 0 <= self.inject_fault_rank < self.nproc:
            raise ConfigError(f"run.inject_fault_rank={self.inject_fault_rank} is invalid; allowed: null or a rank in "
                              f"[0, run.nproc={self.nproc})")
        if self.timeout_s <= 0:
            raise ConfigError(f"run.timeout_s={self.timeout_s} is invalid; it must be > 0")
        if self.nvml_interval_ms < 1:
            raise ConfigError(f"run.nvml_interval_ms={self.nvml_interval_ms} is invalid; it must be >= 1")


@dataclass(frozen=True)
class QualitySpec:
    """Whether a job measures quality (a budget, a verdict and held-out eval curves in its row; harness/verdict.py),
    and how: a memory sweep (measure=false) claims no quality number."""

    measure: bool
    eval_tokens: int
    eval_every: int
    not_learning_fraction: float

    def check(self) -> None:
        if self.eval_tokens < 1:
            raise ConfigError(f"quality.eval_tokens={self.eval_tokens} is invalid; it must be >= 1")
        if self.eval_every < 0:
            raise ConfigError(f"quality.eval_every={self.eval_every} is invalid; it must be >= 0 (0: at start and "
                              "end only)")
        if not 0 < self.not_learning_fraction < 1:
            raise ConfigError(f"quality.not_learning_fraction={self.not_learning_fraction} is invalid; it must be in "
                              "(0, 1)")


@dataclass(frozen=True)
class LlamaSpec:
    name: str
    family: Literal["llama"]
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int
    max_position_embeddings: int

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"model.{f.name}={value} is invalid; it must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} must be divisible by "
                              f"model.num_attention_heads={self.num_attention_heads}")
        if self.hidden_size // self.num_attention_heads % 2:  # RoPE rotates pairs of a head's dimensions
            raise ConfigError(f"model.hidden_size / model.num_attention_heads = {self.hidden_size} / "
                              f"{self.num_attention_heads} is an odd head size; RoPE needs an even one")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) features of the model's nn.Linear layers by attribute name, as harness/models.py builds it
        (as many key/value heads as query heads, an untied LM head): what a transform's targets may name."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h), "gate_proj": (i, h),
                "up_proj": (i, h), "down_proj": (h, i), "lm_head": (self.vocab_size, h)}

    def matrix_names(self) -> list[str]:
        """Names of the model's 2-D parameters as LlamaForCausalLM gives them: what the low-rank optimizers'
        target_modules are matched against (as substrings)."""
        blocks = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
        layers = [f"model.layers.{i}.{block}.{name}.weight" for i in range(self.num_hidden_layers)
                  for block, names in blocks.items() for name in names]
        return ["model.embed_tokens.weight", *layers, "lm_head.weight"]


@dataclass(frozen=True)
class CheckpointSpec(LlamaSpec):
    """A LLaMA saved by save_pretrained (harness/checkpoints.py): `path` its folder, or `base` the overrides of the
    pretrain job of the same sweep that saves it. Planning fills the shape (LlamaSpec's fields) from the base's
    model or the folder's config.json, so every plan-time check sees the model's layers."""

    family: Literal["checkpoint"]
    path: str
    base: list[str] | None = None


@dataclass(frozen=True)
class HubModelSpec:
    name: str
    family: Literal["hub"]
    hub_name: str
    pretrained: bool = False

    max_position_embeddings = None  # unknown until the hub config is read in the job
    vocab_size = None

    def check(self) -> None:
        if not self.hub_name.strip():
            raise ConfigError("model.hub_name is empty; give a hub id or a local folder")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    optimizer: dict | None = None  # training methods; a generate method has none
    transforms: list[str] = field(default_factory=list)
    loop: str = "standard"
    transform_options: dict = field(default_factory=dict)  # {transform name: {option: value}}
    cache: str | None = None  # generate methods: a methods.CACHES key (the KV cache the decode loop uses)
    cache_options: dict = field(default_factory=dict)

    def check(self) -> None:
        twice = sorted({t for t in self.transforms if self.transforms.count(t) > 1})
        if twice:
            raise ConfigError(f"method.transforms=[{', '.join(self.transforms)}] names {twice[0]} twice; each transform "
                              "applies once")


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int | None
    peak_bf16_flops: float | None
    bandwidth_bytes_per_s: float | None

    def check(self) -> None:
        for name in ("memory_bytes", "peak_bf16_flops", "bandwidth_bytes_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"gpu.{name}={value} is invalid; it must be > 0, or null where unknown")


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    kind: Literal["train", "finetune", "generate"]
    source: dict | None = None  # finetune: the corpus the checkpoint learned (a dataset mapping; harness/finetune.py)


@dataclass(frozen=True)
class InferSpec:
    """scenario=generate (harness/infer.py): prefill prompt_len tokens, decode decode_len tokens, batch_size prompts;
    batch_size=auto searches the largest batch whose peak stays within memory_budget_gib (harness/batch_search.py).
    fidelity: teacher-forced decoding of fidelity_windows held-out windows of fidelity_len tokens (the first
    fidelity_prefill as the prompt) through the cache, against the full cache (harness/fidelity.py)."""

    prompt_len: int = 128
    decode_len: int = 32
    batch_size: int | Literal["auto"] = 1
    prefill_batch: int | None = None  # sequences per prefill forward (null: the whole batch at once)
    memory_budget_gib: float | None = None  # batch_size=auto: allocator peak (CPU: live-tensor peak) allowed
    batch_limit: int = 1024  # batch_size=auto searches no further
    fidelity: bool = False
    fidelity_windows: int = 4
    fidelity_len: int = 512
    fidelity_prefill: int = 32

    def check(self) -> None:
        for name in ("prompt_len", "decode_len", "batch_limit", "fidelity_windows", "fidelity_prefill"):
            if getattr(self, name) < 1:
                raise ConfigError(f"infer.{name}={getattr(self, name)} is invalid; it must be >= 1")
        for name in ("batch_size", "prefill_batch"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"infer.{name}={value} is invalid; it must be >= 1" +
                                  (" or auto" if name == "batch_size" else " or null"))
        if self.fidelity_len <= self.fidelity_prefill:
            raise ConfigError(f"infer.fidelity_len={self.fidelity_len} must be > infer.fidelity_prefill="
                              f"{self.fidelity_prefill} (at least one teacher-forced decode step)")
        if self.memory_budget_gib is not None and not 0 < self.memory_budget_gib < float("inf"):
            raise ConfigError(f"infer.memory_budget_gib={self.memory_budget_gib} is invalid; it must be > 0 or null")
        if self.batch_size == "auto" and self.memory_budget_gib is None:
            raise ConfigError("infer.batch_size=auto needs infer.memory_budget_gib (GiB of peak memory allowed)")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    params: dict

    def check(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise ConfigError(f"sweep.name={self.name!r} is invalid; use letters, digits, '-', '_', '.'")


@dataclass(frozen=True)
class LauncherSpec:
    """Where a sweep's jobs run (conf/launcher/): here, one after another (local), or as a SLURM job array through
    submitit (slurm; harness/cluster.py), with the keys of Hydra's submitit launcher."""

    name: Literal["local", "slurm"]
    cluster: Literal["slurm", "local", "debug"] = "slurm"  # submitit's AutoExecutor(cluster=...): local/debug to try
    submitit_folder: str | None = None  # null: <sweep folder>/.submitit
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 60
    nodes: int = 1
    gpus_per_node: int | None = None  # null: run.nproc when the job may use a GPU (run.device cuda or auto), else 0
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    additional_parameters: dict = field(default_factory=dict)
    array_parallelism: int = 256
    max_num_timeout: int = 3  # requeues after a SLURM time limit (preemptions requeue without limit)
    signal_delay_s: int = 120
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, source venv)
    job_name: str | None = None  # null: membench-<sweep>

    def check(self) -> None:
        for name in ("timeout_min", "array_parallelism", "nodes", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"launcher.{name}={getattr(self, name)} is invalid; it must be >= 1")
        if self.nodes != 1 or self.tasks_per_node != 1:
            raise ConfigError(f"launcher.nodes={self.nodes} launcher.tasks_per_node={self.tasks_per_node}: a cluster "
                              "job is one task on one node that starts run.nproc ranks itself (torchrun); allowed: 1")
        for name in ("gpus_per_node", "cpus_per_task", "mem_gb", "max_num_timeout", "signal_delay_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"launcher.{name}={value} is invalid; it must be >= 0")


LOCAL_LAUNCHER = LauncherSpec(name="local")

MODEL_FAMILIES = {"llama": LlamaSpec, "hub": HubModelSpec, "checkpoint": CheckpointSpec}


def _by_kind(table: dict, data: Any, key: str, where: str):
    kind = data.get(key) if isinstance(data, dict) else None
    if kind not in table:
        raise ConfigError(f"{where}.{key}={kind!r} is invalid; allowed: {', '.join(table)}")
    return parse(table[kind], data, where)


@dataclass(frozen=True)
class JobSpec:
    """One fully validated job: what the child process builds and runs."""

    model: LlamaSpec | HubModelSpec | CheckpointSpec
    dataset: SyntheticSpec | TextSpec | HubDataSpec | TaskSpec
    method: MethodSpec
    scenario: ScenarioSpec
    gpu: GpuSpec
    sweep: SweepSpec
    train: TrainSpec
    run: RunSpec
    quality: QualitySpec
    infer: InferSpec = field(default_factory=InferSpec)
    launcher: LauncherSpec = LOCAL_LAUNCHER

    @classmethod
    def from_dict(cls, cfg: dict) -> JobSpec:
        expected = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(expected))
        if unknown:
            raise ConfigError(f"unknown top-level key '{unknown[0]}'; allowed: {', '.join(expected)}")
        spec = cls(
            model=_by_kind(MODEL_FAMILIES, cfg.get("model"), "family", "model"),
            dataset=_by_kind(DATASET_KINDS, cfg.get("dataset"), "kind", "dataset"),
            method=parse(MethodSpec, cfg.get("method"), "method"),
            scenario=parse(ScenarioSpec, cfg.get("scenario"), "scenario"),
            gpu=parse(GpuSpec, cfg.get("gpu"), "gpu"),
            sweep=parse(SweepSpec, cfg.get("sweep"), "sweep"),
            train=parse(TrainSpec, cfg.get("train"), "train"),
            run=parse(RunSpec, cfg.get("run"), "run"),
            quality=parse(QualitySpec, cfg.get("quality"), "quality"),
            infer=parse(InferSpec, cfg.get("infer", {}), "infer"),
            launcher=parse(LauncherSpec, cfg.get("launcher", {"name": "local"}), "launcher"),
        )
        for part in (spec.model, spec.dataset, spec.method, spec.gpu, spec.train, spec.run, spec.sweep, spec.quality,
                     spec.infer, spec.launcher):
            part.check()
        return spec
