"""Every YAML composes and validates; bad input fails at planning with one line."""
import itertools
import random
from pathlib import Path

import pytest
import yaml

from harness import CONF_DIR
from harness.config import GROUPS, group_options, nvidia_gpu_count, plan
from harness.schema import ConfigError

NEEDS = {("model", "hub"): ["model.hub_name=some-org/some-model"], ("dataset", "hub"): ["dataset.hub_name=wikitext"],
         # on a CPU host its 25 GiB of fp32 weights may exceed the host memory limit (refused: tests/test_fits.py)
         ("model", "llama_7b"): ["run.host_memory_limit_gib=null"], ("scenario", "generate"): ["method=kv_full"]}


def _expected_failure(group: str, option: str) -> str | None:
    """Options that cannot compose on this machine, and the error that must say why."""
    if (group, option) in (("dataset", "wikitext2"), ("dataset", "tinyshakespeare")):
        path = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())["path"]
        if not (CONF_DIR.parent / path).exists():
            return "file not found"
    if (group, option) == ("dataset", "corpus_source"):
        corpora = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())["corpora"]
        if not all((CONF_DIR.parent / c["path"]).exists() for c in corpora):
            return "file not found"
    if (group, option) == ("model", "checkpoint"):  # it names a folder or a base job (tests/test_checkpoints.py)
        return "model=checkpoint needs model.path"
    if (group, option) == ("scenario", "finetune"):  # it needs a pretrained model (tests/test_finetune.py)
        return "scenario=finetune starts from a pretrained model"
    if group == "gpu" and option not in ("auto", "cpu") and not nvidia_gpu_count():
        return "gives a GPU's figures but the job runs on the CPU"
    if (group, option) == ("gpu", "cpu") and nvidia_gpu_count():
        return "gpu=cpu but the job runs on a GPU"
    if group == "sweep" and not nvidia_gpu_count():
        params = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())["params"]
        if params.get("run.device") == "cuda":
            return "no NVIDIA GPU is visible|file not found"
    return None


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_yaml_composes(group, option, results_dir, tmp_path):
    extra = NEEDS.get((group, option), [])
    if group == "method" and "cache" in yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()):
        extra = ["scenario=generate"]  # a generate method (methods.CACHES)
    if (group, option) == ("dataset", "text_file"):  # varied words: a BPE turns a repeated line into a few tokens
        rng = random.Random(0)
        words = ("".join(rng.choices("abcdefghij", k=rng.randint(1, 7))) for _ in range(20000))
        (tmp_path / "corpus.txt").write_text(" ".join(words))
        extra = [f"dataset.path={tmp_path / 'corpus.txt'}"]
    args = [f"{group}={option}", f"run.results_dir={results_dir}", *extra]
    failure = _expected_failure(group, option)
    if failure:
        with pytest.raises(ConfigError, match=failure):
            plan(args)
        return
    jobs = plan(["-m", *args] if group == "sweep" else args)
    assert jobs and all(job.run_id for job in jobs)
    assert not results_dir.exists(), "planning must not write anything"


@pytest.mark.parametrize("path", sorted(CONF_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_yaml_header_says_how_to_run_and_name_matches(path: Path):
    text = path.read_text()
    header = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())  # the leading comment lines
    assert "python -m harness.run" in "\n".join(header), f"{path} needs a header comment showing how to run it"
    data = yaml.safe_load(text)
    if path.parent != CONF_DIR and path.parent.name != "sweep":
        assert data["name"] == path.stem, f"{path}: name must equal the file name"


def test_default_sweeps_cover_the_required_methods():
    cpu = yaml.safe_load((CONF_DIR / "sweep" / "default_cpu.yaml").read_text())["params"]["method"].split(",")
    gpu = yaml.safe_load((CONF_DIR / "sweep" / "default_gpu.yaml").read_text())["params"]
    assert {"adamw", "sgd", "adafactor", "adamw_ckpt"} <= set(cpu) and set(cpu) <= set(gpu["method"].split(","))
    assert set(gpu["model"].split(",")) == {"llama_60m", "llama_1b"}


def test_sweep_expands_and_cli_wins_over_sweep_params(results_dir):
    jobs = plan(["sweep=default_cpu", "method=sgd", f"run.results_dir={results_dir}"])
    assert [j.spec.method.name for j in jobs] == ["sgd"]
    jobs = plan(["-m", "sweep=default_cpu", "train.batch_size=2,4", f"run.results_dir={results_dir}"])
    assert len(jobs) == 8 and {j.spec.train.batch_size for j in jobs} == {2, 4}
    assert len({j.job_dir for j in jobs}) == 8 and len({j.run_id for j in jobs}) == 8


def test_run_id_ignores_operational_keys(results_dir):
    a = plan([f"run.results_dir={results_dir}"])[0]
    b = plan([f"run.results_dir={results_dir}", "run.timeout_s=5", "run.force=true"])[0]
    c = plan([f"run.results_dir={results_dir}", "train.seed=1"])[0]
    assert a.run_id == b.run_id != c.run_id


@pytest.mark.parametrize("option", group_options("gpu"))
def test_gpu_figures_are_numbers_for_any_yaml_reader(option):
    data = yaml.safe_load((CONF_DIR / "gpu" / f"{option}.yaml").read_text())
    for key in ("memory_bytes", "peak_bf16_flops", "bandwidth_bytes_per_s"):
        assert data[key] is None or isinstance(data[key], (int, float)), f"{option}.{key}={data[key]!r}"
