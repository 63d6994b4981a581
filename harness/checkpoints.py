"""Checkpoints: a job saves its model in Hugging Face format, a later job loads it, and a sweep may depend on a base
job that trains the model once for all of its jobs.

- Saving (train.save_checkpoint=true): after the last step and eval, `save_pretrained` (safetensors) writes the
  model to <job folder>/checkpoint, written under a temporary name and renamed, so a folder there is whole; the
  row's checkpoint_path and checkpoint_bytes say where and how much.
- Loading (model=checkpoint model.path=FOLDER): `from_pretrained` builds the model on the meta device and fills it
  from the safetensors file(s) on the job's device, so no random init and no host copy of the model is made. With a
  transform that quantizes the base weights (int8_weights, qlora: STREAMED_LOAD in their module) the load is
  streamed instead: the skeleton stays on the meta device and each decoder layer is materialized, filled and
  quantized in turn (load_streamed), so at most one layer is ever held in the compute dtype.
- A base job (model=checkpoint model.base=[overrides]): planning plans the overrides as one pretrain job of the same
  sweep folder with train.save_checkpoint=true; every job naming the same overrides loads that job's checkpoint, and
  the base runs before them (harness/run.py). Its row is kept like any other: a resumed sweep does not train it again
  while its checkpoint folder is there, and a base that did not end ok leaves its dependents `skipped`, the reason
  naming the base.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.schema import ConfigError

CHECKPOINT_DIR = "checkpoint"
# what a base job takes from the job that depends on it, unless its own overrides set it
INHERITED = ("sweep.name", "run.results_dir", "run.device", "run.timeout_s", "run.retry_failed", "run.force")
LLAMA_SHAPE = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
               "max_position_embeddings")


def folder_of(job_dir: Path) -> Path:
    return job_dir / CHECKPOINT_DIR


# ---------------------------------------------------------------- planning


def check_save(config: dict) -> None:
    """train.save_checkpoint=true saves a transformers model: a method whose transforms replace its linear layers
    (LoRA, QLoRA, INT8, factorized) leaves a model that from_pretrained cannot rebuild."""
    from methods import TRANSFORMS

    if not config["train"].get("save_checkpoint"):
        return
    method = config["method"]
    replacing = [t for t in method.get("transforms") or [] if getattr(TRANSFORMS.get(t), "REPLACES", "") ==
                 "the target linear layers"]
    if replacing:
        raise ConfigError(f"train.save_checkpoint=true saves the model with save_pretrained, but method "
                          f"{method.get('name')} replaces its linear layers ({replacing[0]}), which from_pretrained "
                          "cannot rebuild; save from a method without that transform")


def _llama_shape_of(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path={folder}: no readable config.json ({type(e).__name__}); give a folder "
                          "written by save_pretrained") from None
    if config.get("model_type") != "llama":
        raise ConfigError(f"model.path={folder} holds a {config.get('model_type')!r} model; model=checkpoint loads "
                          "LLaMA checkpoints, use model=hub model.hub_name=FOLDER model.pretrained=true for others")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"model.path={folder} has no .safetensors file; save it with save_pretrained")
    return {key: config[key] for key in LLAMA_SHAPE}


def resolve(config: dict, given: set[str], plan_base) -> object | None:
    """Fill a model=checkpoint section of a job's config: its LLaMA shape (from the base job's model or the
    folder's config.json) and model.path; a finetune job's scenario.source becomes the base's dataset. Returns the
    base job (planned by `plan_base(argv)`), or None."""
    model = config.get("model")
    if not isinstance(model, dict) or model.get("family") != "checkpoint":
        return None
    base = model.get("base")
    if base is None:
        if not model.get("path"):
            raise ConfigError("model=checkpoint needs model.path (a folder saved by save_pretrained) or model.base "
                              "(the overrides of the pretrain job that saves it)")
        folder = Path(os.path.expanduser(model["path"])).absolute()
        model.update(_llama_shape_of(folder), path=str(folder))
        return None
    if model.get("path"):
        raise ConfigError("model.path and model.base both say where the checkpoint is; give one")
    if not isinstance(base, list) or not all(isinstance(o, str) for o in base):
        raise ConfigError(f"model.base={base!r} is invalid; give the base job's overrides as a list, e.g. "
                          "'model.base=[\"model=llama_60m\",\"dataset=wikitext2\"]'")
    argv = list(base) + ["train.save_checkpoint=true"]
    named = {o.split("=")[0].lstrip("+~") for o in base}
    argv += [f"{key}={_get(config, key)}" for key in INHERITED if key not in named]
    try:
        jobs = plan_base(tuple(argv))
    except ConfigError as e:
        raise ConfigError(f"model.base: {e}") from None
    if len(jobs) != 1:
        raise ConfigError(f"model.base={base} plans {len(jobs)} jobs; a base is one job (no sweep, run.repeats=1)")
    (job,) = jobs
    if job.spec.model.family == "checkpoint" and job.spec.model.base:
        raise ConfigError("model.base names a job that has a base itself; a base starts from a model config or a "
                          "checkpoint folder (model.path)")
    base_model = job.config["model"]
    model.update({key: base_model[key] for key in LLAMA_SHAPE}, path=str(folder_of(job.job_dir)))
    if "model.name" not in given:
        model["name"] = base_model["name"]
    scenario = config.get("scenario") or {}
    if scenario.get("kind") == "finetune" and scenario.get("source") is None:
        scenario["source"] = job.config["dataset"]
    return job


def _get(config: dict, dotted: str):
    section, key = dotted.split(".")
    return config[section][key]


# ---------------------------------------------------------------- running


def blocked(job, rows_by_run_id: dict) -> str | None:
    """Why a job that depends on a base cannot run (its base's row is not ok, or its checkpoint is gone); None when
    it can or has no base."""
    if job.base_run_id is None:
        return None
    row = rows_by_run_id.get(job.base_run_id)
    base = f"base job {job.base_run_id}"
    if row is None:
        return f"{base} has no row"
    if row.get("status") != "ok":
        return f"{base} ended {row.get('status')}: {row.get('error') or 'no error recorded'}"[:400]
    if not Path(job.spec.model.path, "config.json").is_file():
        return f"{base} ended ok but its checkpoint {job.spec.model.path} is gone; rerun it (run.force=true)"
    return None


def must_rerun(job, previous: dict | None) -> bool:
    """A kept ok row of a job that saves a checkpoint counts only while the checkpoint is there."""
    return (job.spec.train.save_checkpoint and previous is not None and previous.get("status") == "ok"
            and not (folder_of(job.job_dir) / "config.json").is_file())


def save(model, folder: Path) -> int:
    """save_pretrained (safetensors) into `folder`, written beside it and renamed into place; its size in bytes."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return sum(f.stat().st_size for f in folder.iterdir())
