"""Compose Hydra configs and plan jobs: command line → validated list of jobs, or one ConfigError line.

Hydra's compose API and override grammar do the composing and the sweep syntax (`method=a,b`, `range(…)`);
jobs are launched by harness.launch (one child process each), not by a Hydra launcher, so every job gets
process isolation, a resume check, and a place on one progress bar. All validation happens here, before any
job starts, so bad input leaves no row and no file behind.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from harness import CONF_DIR, checkpoints, ranks
from harness.data_checks import (
    check_local_hub_name,
    check_prompt_windows,
    check_windows,
    content_digest,
    file_state,
    resolve_path,
    split_sizes,
)
from harness.fits import check_weights_fit
from harness.hints import hint
from harness.nvml import visible_handles
from harness.recipes import apply_recipe, resolve_auto_rank, resolve_part_seeds, resolve_warmup_fraction
from harness.schema import ConfigError, JobSpec
from harness.tokenizer import check_vocab

GROUPS = ("model", "dataset", "method", "scenario", "gpu", "sweep", "launcher")
# Keys added after rows were committed, at the value that runs a job as before them: left out of run_id there, so
# those rows keep their run_id (and resume). The launcher group says where a job runs, not what it measures.
NEUTRAL_DEFAULTS = {"train.grad_accum": 1, "train.distributed": "none", "run.nproc": 1, "run.inject_fault_rank": None}
# Keys that change how a job is run, not what it measures: they stay out of run_id and the folder name.
OPERATIONAL_KEYS = ("run.force", "run.retry_failed", "run.timeout_s", "run.results_dir", "run.repeats", "run.busy_gpu",
                    "run.host_memory_limit_gib", "run.parallel", "run.resume_from", "run.estimate")


@cache
def group_options(group: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def default_config() -> dict:
    """The config a command line without overrides composes (??? where a value must be given)."""
    return _compose([], throw_on_missing=False)


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    config: dict  # the resolved config, plain containers
    overrides: tuple[str, ...]  # what makes this job differ from the defaults
    repeat: int
    run_id: str
    job_dir: Path
    recipe: tuple[str, ...] = ()  # the key=value pairs the method's per-model recipe set (harness/recipes.py)
    base_run_id: str | None = None  # the base job whose checkpoint this job loads (harness/checkpoints.py)

    @property
    def sweep_dir(self) -> Path:
        return self.job_dir.parent


def _compose(overrides: list[str], throw_on_missing: bool = True) -> dict:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "a value"
        raise ConfigError(f"{key} must be set (it is ??? in its YAML); e.g. {key}=VALUE") from None
    except (OmegaConfBaseException, Exception) as e:  # Hydra's own errors span lines; keep the first
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()


def _parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(f"malformed override: {str(e).strip().splitlines()[0]}") from None


def _values(o) -> list[str]:
    """The values an override takes: one, a sweep's (`a,b`, `range(…)`), or a config group's options that match a
    glob (`glob(*)`, `glob([a*,b*],exclude=…)`, expanded against the group's YAML files as Hydra does)."""
    if not o.is_sweep_override():
        return [o.get_value_element_as_str()]
    if not isinstance(o.value(), Glob):
        return list(o.sweep_string_iterator())
    key = o.key_or_group
    if key not in GROUPS:
        raise ConfigError(f"'{o.input_line}': glob(...) selects options of a config group ({', '.join(GROUPS)}); "
                          f"for {key} list the values instead (a,b,c) or use range(...)")
    matched = o.value().filter(list(group_options(key)))
    if not matched:
        raise ConfigError(f"'{o.input_line}' matches no {key}; allowed {key}s: {', '.join(group_options(key))}")
    return matched


def _check_group_values(parsed) -> None:
    for o in parsed:
        key = o.key_or_group
        if key not in GROUPS or o.is_delete():
            continue
        if key == "sweep" and o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}': sweep= names one sweep; run each named sweep by itself")
        if key == "launcher" and o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}': launcher= says where the whole sweep runs; give one")
        for value in _values(o):
            if value not in group_options(key):
                raise ConfigError(f"unknown {key} '{value}'; allowed {key}s: {', '.join(group_options(key))}")


def _check_keys_exist(parsed, base: dict) -> None:
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS or o.is_add() or o.is_force_add() or o.is_delete():
            continue
        node: object = base
        for i, part in enumerate(key.split(".")):
            if not isinstance(node, dict) or part not in node:
                parent = ".".join(key.split(".")[:i]) or "the top level"
                allowed = ", ".join(node) if isinstance(node, dict) else "none (not a mapping)"
                raise ConfigError(f"unknown key '{key}'{hint(key)}; allowed keys under {parent}: {allowed}")
            node = node[part]


def _expand(parsed) -> list[list[str]]:
    axes = []
    for o in parsed:
        key = o.get_key_element()
        axes.append([f"{key}={v}" for v in _values(o)])
    return [list(combo) for combo in itertools.product(*axes)]


def _sweep_params_as_overrides(params: dict) -> list[str]:
    out = []
    for key, value in params.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else ("null" if value is None else str(value))
        out.append(f"{key}={text}")
    return out


def _check_generate_lengths(spec: JobSpec) -> None:
    """scenario=generate: the longest sequence a job runs fits the model's positions."""
    infer, limit = spec.infer, spec.model.max_position_embeddings
    longest = max(infer.prompt_len + infer.decode_len, infer.fidelity_len if infer.fidelity else 0)
    if limit and longest > limit:
        raise ConfigError(f"infer.prompt_len + infer.decode_len (or infer.fidelity_len) = {longest} exceeds model "
                          f"{spec.model.name}'s max_position_embeddings={limit}; lower them or set "
                          f"model.max_position_embeddings")


def _cross_check(spec: JobSpec, config: dict) -> None:
    """Checks that span groups or touch the file system."""
    from harness.parts import check_generate_method, check_method  # methods pulls in torch, which only jobs need

    generate = spec.scenario.kind == "generate"
    (check_generate_method if generate else check_method)(spec.method, spec.run.device, spec.model)
    from harness.finetune import check as check_finetune

    check_finetune(spec, config)
    model, data, train = spec.model, spec.dataset, spec.train
    if generate:
        _check_generate_lengths(spec)
    elif model.max_position_embeddings and train.seq_len > model.max_position_embeddings:
        raise ConfigError(f"train.seq_len={train.seq_len} exceeds model {model.name}'s "
                          f"max_position_embeddings={model.max_position_embeddings}")
    check_vocab(data, model)
    for path in spec.run.resume_from or ():
        if not resolve_path(path).is_file():
            raise ConfigError(f"run.resume_from: no rows file at {resolve_path(path)}")
    sizes = split_sizes(data, model, config)
    if sizes is not None:
        (check_prompt_windows if generate else check_windows)(spec.infer if generate else train, spec.quality,
                                                                  sizes)
    for key, name, needs in (("model.hub_name", getattr(model, "hub_name", None), "config.json"),
                             ("dataset.hub_name", getattr(data, "hub_name", None), None)):
        check_local_hub_name(key, name, needs)
    remote = spec.launcher.name != "local"  # the job runs on a cluster node, whose GPUs this host does not see
    if remote and importlib.util.find_spec("submitit") is None:
        raise ConfigError(f"launcher={spec.launcher.name} needs submitit: pip install -e '.[slurm]'")
    if spec.run.device == "cuda" and not remote and not nvidia_gpu_count():
        raise ConfigError("run.device=cuda but no NVIDIA GPU is visible (NVML); use run.device=cpu or auto")
    ranks.check(spec, None if remote else nvidia_gpu_count())
    if spec.run.device == "cpu" and train.dtype == "fp16":
        raise ConfigError("train.dtype=fp16 is not supported on run.device=cpu; allowed there: auto, fp32, bf16")
    on_cpu = spec.run.device == "cpu" or (spec.run.device == "auto" and not (remote or nvidia_gpu_count()))
    if on_cpu and spec.gpu.name not in ("auto", "cpu"):
        raise ConfigError(f"gpu={spec.gpu.name} gives a GPU's figures but the job runs on the CPU "
                          f"(run.device={spec.run.device}); use gpu=auto or gpu=cpu there")
    if on_cpu and train.batch_size == "auto" and train.memory_budget_gib is None:
        raise ConfigError("train.batch_size=auto on the CPU needs train.memory_budget_gib (GiB of live tensors "
                          "allowed): no OOM bounds the search there")
    if not on_cpu and spec.gpu.name == "cpu":
        raise ConfigError(f"gpu=cpu but the job runs on a GPU (run.device={spec.run.device}); use gpu=auto or the "
                          f"GPU's name ({', '.join(g for g in group_options('gpu') if g not in ('auto', 'cpu'))})")
    check_weights_fit(spec, on_cpu)


@lru_cache(maxsize=1)
def nvidia_gpu_count() -> int:
    """GPUs this process may use (NVML, narrowed by CUDA_VISIBLE_DEVICES), without creating a CUDA context in this
    (parent) process."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return len(visible_handles(pynvml))
    except Exception:  # no driver, no library: no GPU
        return 0


# The longest name a job writes in its folder (write_json_atomic's temp file of result.json).
_LONGEST_FILE_NAME = "result.json.tmp"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            os.stat(candidate)
            return candidate
        except OSError:  # missing, or a name too long to look up: try its parent
            continue
    return Path(path.anchor)


def _check_job_dir(job_dir: Path, results_dir: Path) -> None:
    """The job's folder can be made: every name in its path fits the file system, and the folders above it exist as
    writable folders or can be created. Tried by making (and removing) a scratch folder in the nearest existing one,
    because permission bits say nothing about root or about read-only mounts."""
    probe = _nearest_existing(job_dir)
    folder = probe if probe.is_dir() else probe.parent  # a file where a folder must go fails below, with its reason
    limits = {n: os.pathconf(folder, n) for n in ("PC_NAME_MAX", "PC_PATH_MAX")}
    for part in job_dir.relative_to(probe).parts:
        if len(part.encode()) > limits["PC_NAME_MAX"]:
            key = "sweep.name" if part == job_dir.parent.name else "run.results_dir"
            raise ConfigError(f"{key}: the folder name '{part[:40]}…' is {len(part.encode())} bytes; the file system "
                              f"at {probe} allows {limits['PC_NAME_MAX']}")
    longest = len(str(job_dir / _LONGEST_FILE_NAME).encode())
    if longest >= limits["PC_PATH_MAX"]:
        raise ConfigError(f"run.results_dir={results_dir} makes file paths of {longest} bytes; the file system "
                          f"allows {limits['PC_PATH_MAX'] - 1}; use a shorter results folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".membench-probe-", dir=probe))
    except OSError as e:
        raise ConfigError(f"run.results_dir={results_dir} is not writable: {e.strerror} (at {probe})") from None


def run_id_of(config: dict, repeat: int) -> str:
    """The job's identity: its config without the operational keys, a text file named by its content (sha256) rather
    than its path, so that rows made on another machine, where the corpus lives elsewhere, resume the same sweep."""
    identity = json.loads(json.dumps(config))
    for dotted in OPERATIONAL_KEYS:
        section, key = dotted.split(".")
        identity.get(section, {}).pop(key, None)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        section, key = dotted.split(".")
        if identity.get(section, {}).get(key, neutral) == neutral:
            identity.get(section, {}).pop(key, None)
    identity.pop("launcher", None)
    if identity.get("model", {}).get("base") is not None:  # a base job's checkpoint: named by the base's overrides
        identity["model"].pop("path", None)
    if identity.get("scenario", {}).get("kind") != "generate":  # infer.* is read by scenario=generate only
        identity.pop("infer", None)
    data = identity.get("dataset", {})
    for key in ("path", "eval_path"):
        if data.get("kind") == "text" and data.get(key):
            data[key] = content_digest(data[key], file_state(data[key]))
    blob = json.dumps({"config": identity, "repeat": repeat}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dirname_of(overrides: list[str]) -> str:
    kept = sorted(o.lstrip("+~") for o in overrides if o.lstrip("+~").split("=")[0] not in OPERATIONAL_KEYS
                  and not o.lstrip("+~").startswith("launcher"))
    name = ",".join(kept) or "defaults"
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def split_argv(argv: list[str]) -> tuple[bool, list[str]]:
    multirun = False
    overrides = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            raise ConfigError(f"unknown flag '{arg}'; allowed: -m/--multirun, -h/--help, --cfg job, then "
                              "key=value overrides")
        elif "=" not in arg:
            raise ConfigError(f"'{arg}' is not an override; write key=value (e.g. method=adamw)")
        else:
            overrides.append(arg)
    return multirun, overrides


@lru_cache(maxsize=8)
def _plan_base(argv: tuple[str, ...]) -> list[Job]:
    """A base job's plan (model.base), once per sweep for all the jobs that name it."""
    return plan(list(argv))


def plan(argv: list[str]) -> list[Job]:
    """Parse the command line, compose every job of the sweep, validate each; raise ConfigError on any problem."""
    multirun, cli = split_argv(argv)
    cli_parsed = _parse(cli)
    _check_group_values(cli_parsed)
    keys = [o.key_or_group for o in cli_parsed]
    for key in keys:
        if keys.count(key) > 1:
            given = ", ".join(o.input_line for o in cli_parsed if o.key_or_group == key)
            raise ConfigError(f"conflicting overrides: {key} is given {keys.count(key)} times ({given}); give it once")
    for o in cli_parsed:
        if o.is_sweep_override() and not multirun:
            raise ConfigError(f"'{o.input_line}' is a sweep; add -m to run it (python -m harness.run -m ...)")
    sweep_choice = [o.input_line for o in cli_parsed if o.key_or_group == "sweep"]
    sweep_cfg = _compose(sweep_choice, throw_on_missing=False)["sweep"]
    if not isinstance(sweep_cfg.get("params"), dict):
        raise ConfigError(f"sweep.params of sweep '{sweep_cfg.get('name')}' must be a mapping of override -> values")
    # A named sweep's params are defaults; the command line wins on the same key.
    cli_keys = {o.key_or_group for o in cli_parsed}
    sweep_parsed = [o for o in _parse(_sweep_params_as_overrides(sweep_cfg["params"])) if o.key_or_group not in cli_keys]
    _check_group_values(sweep_parsed)
    parsed = sweep_parsed + [o for o in cli_parsed if o.key_or_group != "sweep"]
    jobs: list[Job] = []
    for combo in _expand(parsed):
        overrides = sweep_choice + combo
        groups_only = [o for o in overrides if o.split("=")[0].lstrip("+~") in GROUPS]
        _check_keys_exist(_parse(overrides), _compose(groups_only, throw_on_missing=False))
        config = _compose(overrides)
        given = {o.split("=")[0].lstrip("+~") for o in combo} - set(GROUPS)  # values set, not options chosen
        base = checkpoints.resolve(config, given, _plan_base)
        checkpoints.check_save(config)
        recipe = apply_recipe(config, given, group_options("model"), group_options("scenario"))
        resolve_auto_rank(config)
        resolve_warmup_fraction(config, given)
        resolve_part_seeds(config)
        spec = JobSpec.from_dict(config)
        _cross_check(spec, config)
        results_dir = resolve_path(spec.run.results_dir)
        sweep_dir = results_dir / spec.sweep.name
        for repeat in range(spec.run.repeats):
            run_id = run_id_of(config, repeat)
            job_dir = sweep_dir / f"{dirname_of(combo)}-r{repeat}"
            _check_job_dir(job_dir, results_dir)
            if base is not None and base.run_id not in {job.run_id for job in jobs}:
                jobs.append(base)  # before its first dependent: harness/run.py runs bases first
            jobs.append(Job(spec, config, tuple(combo), repeat, run_id, job_dir, recipe,
                            base.run_id if base is not None else None))
    seen = {}
    for job in jobs:
        if job.run_id in seen:
            raise ConfigError(f"the sweep repeats one job twice ({' '.join(job.overrides)}); check for conflicting overrides")
        seen[job.run_id] = job
    return jobs
