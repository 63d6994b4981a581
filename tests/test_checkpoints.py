"""Checkpoints: save_pretrained -> from_pretrained is bit-exact; a sweep's base job trains once and its dependents
load its checkpoint; a base that fails leaves its dependents skipped, and resume knows both."""
import pytest
import torch

from harness import checkpoints
from harness.config import plan
from harness.launch import run_job
from harness.loading import from_checkpoint
from harness.models import build_model
from harness.schema import ConfigError, LlamaSpec
from tests.helpers import FAST, rows_of, run_cli

TINY = LlamaSpec("llama_tiny", "llama", 64, 172, 4, 2, 1024, 512)
BASE = "model.base=[" + ",".join(f"'{o}'" for o in ["model=llama_tiny", *FAST]) + "]"  # Hydra quotes a value with =


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_then_load_is_bit_exact(tmp_path, dtype):
    torch.manual_seed(0)
    model = build_model(TINY, dtype, torch.device("cpu"))
    size = checkpoints.save(model, tmp_path / "checkpoint")
    assert size > 0 and (tmp_path / "checkpoint" / "model.safetensors").is_file()
    loaded = from_checkpoint(str(tmp_path / "checkpoint"), dtype, torch.device("cpu"))
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for name, tensor in saved.items():
        assert back[name].dtype == dtype and torch.equal(back[name], tensor), name
    batch = torch.randint(1024, (2, 16))
    assert torch.equal(model(input_ids=batch).logits, loaded(input_ids=batch).logits)


def test_a_checkpoint_folder_gives_the_model_its_shape(tmp_path):
    checkpoints.save(build_model(TINY, torch.float32, torch.device("cpu")), tmp_path / "ckpt")
    (job,) = plan(["model=checkpoint", f"model.path={tmp_path / 'ckpt'}", *FAST, f"run.results_dir={tmp_path}"])
    assert job.spec.model.hidden_size == 64 and job.spec.model.num_hidden_layers == 2 and job.base_run_id is None
    with pytest.raises(ConfigError, match="model.path=.*no readable config.json"):
        plan(["model=checkpoint", f"model.path={tmp_path}", *FAST])
    with pytest.raises(ConfigError, match="model=checkpoint needs model.path"):
        plan(["model=checkpoint", *FAST])


def test_a_sweep_plans_its_base_once_before_its_dependents(tmp_path):
    jobs = plan(["-m", "model=checkpoint", BASE, "method=adamw,sgd", *FAST, f"run.results_dir={tmp_path}"])
    base, *dependents = jobs
    assert base.spec.train.save_checkpoint and base.base_run_id is None and base.spec.model.name == "llama_tiny"
    assert len(dependents) == 2 and {d.base_run_id for d in dependents} == {base.run_id}
    assert {d.spec.model.path for d in dependents} == {str(checkpoints.folder_of(base.job_dir))}
    assert all(d.spec.model.name == "llama_tiny" and d.spec.model.hidden_size == 64 for d in dependents)


def test_saving_a_model_whose_layers_a_transform_replaced_is_refused():
    with pytest.raises(ConfigError, match="train.save_checkpoint=true .* replaces its linear layers \\(lora\\)"):
        plan(["method=lora", "train.save_checkpoint=true", *FAST])


def test_the_base_trains_once_and_its_dependent_loads_its_checkpoint(tmp_path):
    args = ["-m", "model=checkpoint", "method=sgd", *FAST]
    ok = run_cli([*args, BASE], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    base, dependent = rows_of(tmp_path)
    assert base["status"] == dependent["status"] == "ok" and base["checkpoint_bytes"] > 0
    assert base["checkpoint_path"].endswith("/checkpoint") and (base["method"], dependent["method"]) == ("adamw", "sgd")
    assert dependent["config"]["model"]["path"] == base["checkpoint_path"]
    again = run_cli([*args, BASE], tmp_path)  # resume: the base is not trained again, nor its dependent
    assert again.returncode == 0 and "2 job(s) already had a row" in again.stdout


def test_a_failed_base_skips_its_dependents_and_resume_keeps_or_retries_them(tmp_path, monkeypatch):
    """The sweep's order and bookkeeping, with the job processes replaced by rows (the base fails, or succeeds and
    writes its checkpoint): no process is started, so the chain is checked in a second."""
    import harness.run as run

    started = []

    def launch(job, provenance, fail):
        started.append(job.run_id)
        row = run_job(job, provenance, skip="stand-in")  # a row with every column, from the real launcher
        if job.spec.train.save_checkpoint and not fail:
            checkpoints.save(build_model(TINY, torch.float32, torch.device("cpu")), checkpoints.folder_of(job.job_dir))
        return {**row, "status": "error" if fail else "ok", "error": "RuntimeError: injected fault" if fail else None}

    jobs = plan(["-m", "model=checkpoint", BASE, "method=adamw,sgd", *FAST, f"run.results_dir={tmp_path}"])
    base = jobs[0]
    monkeypatch.setattr(run, "_launch", lambda job, provenance: launch(job, provenance, fail=True))
    rows = run.run_sweep(jobs, progress=False)
    assert started == [base.run_id] and [r["status"] for r in rows] == ["error", "skipped", "skipped"]
    assert all(r["error"] == f"base job {base.run_id} ended error: RuntimeError: injected fault" for r in rows[1:])
    started.clear()
    assert [r["status"] for r in run.run_sweep(jobs, progress=False)] == ["error", "skipped", "skipped"]
    assert started == []  # resume keeps all three rows

    retry = plan(["-m", "model=checkpoint", BASE, "method=adamw,sgd", *FAST, f"run.results_dir={tmp_path}",
                  "run.retry_failed=true"])
    monkeypatch.setattr(run, "_launch", lambda job, provenance: launch(job, provenance, fail=False))
    rows = run.run_sweep(retry, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"] and started[0] == retry[0].run_id  # the base first


def test_a_dependents_run_id_does_not_depend_on_where_the_results_folder_is(tmp_path):
    args = ["model=checkpoint", BASE, *FAST]
    (_, here), (_, there) = (plan([*args, f"run.results_dir={tmp_path / folder}"]) for folder in ("a", "b"))
    assert here.spec.model.path != there.spec.model.path and here.run_id == there.run_id
