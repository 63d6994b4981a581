"""What the command line says about the config: --help lists every key with its default, --cfg job prints each job's
composed config and runs nothing, and an unknown key with a well-known home names it."""
import re

import pytest
import yaml

from harness.config import _compose, default_config, plan
from harness.hints import _HOMES
from harness.recipes import leaves
from harness.schema import ConfigError
from tests.helpers import run_cli


def test_help_lists_every_key_with_its_default(tmp_path):
    proc = run_cli(["--help"], tmp_path / "results")
    assert proc.returncode == 0
    keys = [key for key, _ in leaves(default_config())]
    assert len(keys) > 40 and all(f"\n  {key}=" in proc.stdout for key in keys)
    assert "\n  train.batch_size=8  (int or one of auto)\n" in proc.stdout
    for line in ("gpu.memory_bytes=null", "run.force=false", "method.optimizer.betas=[0.9, 0.999]"):
        assert f"\n  {line}\n" in proc.stdout
    assert "\n  run.device=auto  (one of auto, cpu, cuda)\n" in proc.stdout  # a choice's allowed values
    assert "\n  run.host_memory_limit_gib=auto  (float or one of auto or null)\n" in proc.stdout
    assert "\n  method    adafactor, adamw" in proc.stdout


def test_cfg_job_prints_each_jobs_config_and_runs_nothing(tmp_path):
    results = tmp_path / "results"
    args = ["-m", "method=galore,sgd", "train.batch_size=3", "run.device=cpu"]
    proc = run_cli(["--cfg", "job", *args], results)
    assert proc.returncode == 0, proc.stderr
    printed = [yaml.safe_load(part) for part in re.split(r"^# job: .*$", proc.stdout, flags=re.M) if part.strip()]
    jobs = plan([*args, f"run.results_dir={results}"])
    assert printed == [job.config for job in jobs] and printed[0]["method"]["optimizer"]["rank"] == 16
    assert not results.exists()


def test_cfg_takes_only_job(tmp_path):
    proc = run_cli(["--cfg", "all"], tmp_path / "results")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--cfg takes one value, job" in proc.stderr


@pytest.mark.parametrize("typed,home", [("hydra.run.dir=/tmp/x", "run.results_dir"), ("train.lr=0.1", "method.optimizer.lr"),
                                        ("lr=0.1", "method.optimizer.lr"), ("train.epochs=3", "train.steps"),
                                        ("model.name_or_path=gpt2", "model=hub model.hub_name=")])
def test_an_unknown_key_with_a_well_known_home_names_it(typed, home):
    with pytest.raises(ConfigError, match=rf"unknown key '{re.escape(typed.split('=')[0])}'; use {re.escape(home)}"):
        plan([typed])


def test_every_hint_points_at_a_key_that_exists():
    """Each home's keys exist in the config composed with the group options it names beside them."""
    for home in _HOMES:
        for alternative in home.split(" or "):
            groups = dict(reversed(re.findall(r"\b(model|dataset|method)=([a-z_0-9]+)", alternative)))
            config = _compose([f"{g}={o}" for g, o in groups.items()], throw_on_missing=False)
            for key in re.findall(r"\b[a-z_]+(?:\.[a-z_0-9]+)+\b", alternative):
                node = config
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, (home, key)
                    node = node[part]
