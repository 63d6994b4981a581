"""Per-model defaults resolve to the papers' published values (each row names its source); the command line and a
sweep's params still win; the table is checked for typos; a warm-up fraction becomes steps."""
import pytest

from harness.config import _compose, group_options, plan
from harness.recipes import apply_recipe, resolve_auto_rank
from harness.schema import ConfigError

GALORE = "GaLore paper Table 2 (Zhao et al., 2024)"
GALORE_7B = "jiaweizzhao/GaLore scripts/benchmark_c4/llama_7b.sh"
APOLLO = "APOLLO paper Table 2 (Zhu et al., 2025)"
FIRA = "xichen-fy/Fira pre_training_c4/scripts/llama_{size}.sh"
QGALORE = "VITA-Group/Q-GaLore scripts/pretrain_c4/llama_{size}.sh"
FRUGAL = "FRUGAL repository, LLaMA-60M C4 script (density 0.25 = a quarter of the hidden size)"
LOW_RANK = "GaLore paper Table 2: low-rank baselines at GaLore's rank"

# (method, model, key under method., value, source)
TABLE = [
    *[(m, model, "optimizer.rank", rank, GALORE) for m in ("galore", "galore8bit", "galore_layerwise", "galore_torch")
      for model, rank in (("llama_60m", 128), ("llama_130m", 256), ("llama_350m", 256), ("llama_1b", 512))],
    *[("galore", "llama_60m", key, value, GALORE) for key, value in
      (("optimizer.lr", 0.01), ("optimizer.update_gap", 200), ("optimizer.scale", 0.25))],
    ("galore", "llama_1b", "optimizer.lr", 0.01, GALORE),
    ("galore", "llama_7b", "optimizer.rank", 1024, GALORE_7B),
    ("galore", "llama_7b", "optimizer.update_gap", 500, GALORE_7B),
    ("galore", "llama_7b", "optimizer.lr", 0.005, GALORE_7B),
    ("galore8bit", "llama_7b", "optimizer.rank", 1024, "jiaweizzhao/GaLore scripts/single_gpu/llama_7b.sh"),
    *[(m, model, "optimizer.rank", rank, APOLLO) for m in ("apollo", "apollo_torch")
      for model, rank in (("llama_60m", 128), ("llama_130m", 256), ("llama_350m", 256), ("llama_1b", 512))],
    ("apollo", "llama_60m", "optimizer.lr", 0.01, APOLLO),
    ("apollo", "llama_60m", "optimizer.scale", 1.0, "APOLLO scripts/pretrain_c4/llama_60m_apollo.sh"),
    ("apollo", "llama_7b", "optimizer.rank", 256, "APOLLO scripts/pretrain_c4/llama_7b_apollo.sh"),
    *[("apollo_mini", model, key, value, "APOLLO-Mini: rank 1, α = √128 (Zhu et al., 2025)")
      for model in ("llama_60m", "llama_1b") for key, value in (("optimizer.rank", 1), ("optimizer.scale", 128**0.5))],
    ("apollo_mini", "llama_60m", "optimizer.lr", 0.01, "APOLLO scripts/pretrain_c4/llama_60m_apollo_mini.sh"),
    *[("fira", f"llama_{size}", key, value, FIRA.format(size=size)) for size, rank, scale in
      (("60m", 128, 0.25), ("130m", 256, 0.25), ("350m", 256, 0.25), ("1b", 512, 0.0625), ("7b", 64, 0.0625))
      for key, value in (("optimizer.rank", rank), ("optimizer.scale", scale))],
    ("fira", "llama_1b", "optimizer.lr", 0.01, FIRA.format(size="1b")),
    ("fira", "llama_7b", "optimizer.update_gap", 500, FIRA.format(size="7b")),
    ("fira", "llama_7b", "optimizer.lr", 0.005, FIRA.format(size="7b")),
    *[("qgalore", f"llama_{size}", key, value, QGALORE.format(size=size)) for size, rank, lr in
      (("60m", 128, 0.015), ("130m", 256, 0.015), ("350m", 256, 0.01), ("1b", 1024, 0.01), ("7b", 1024, 0.004))
      for key, value in (("optimizer.rank", rank), ("optimizer.lr", lr))],
    *[("frugal", model, "optimizer.rank", rank, FRUGAL) for model, rank in (("llama_60m", 128), ("llama_1b", 512))],
    ("frugal", "llama_60m", "optimizer.lr", 0.001, FRUGAL),
    ("frugal", "llama_60m", "optimizer.update_gap", 200, FRUGAL),
    ("frugal", "llama_60m", "optimizer.free_lr_ratio", 1.0, FRUGAL),
    *[("adamw", model, "optimizer.lr", 0.001, "GaLore / APOLLO papers' full-rank baseline")
      for model in ("llama_60m", "llama_1b")],
    *[(m, model, f"transform_options.{t}.rank", rank, LOW_RANK)
      for m, t in (("lowrank_pretrain", "factorized"), ("lora_pretrain", "lora"))
      for model, rank in (("llama_60m", 128), ("llama_130m", 256), ("llama_350m", 256), ("llama_1b", 512))],
    ("lora_pretrain", "llama_60m", "transform_options.lora.alpha", 32.0, "ReLoRA's ReLoRaModel default lora_alpha"),
    ("lora_pretrain", "llama_60m", "transform_options.lora.train_rest", True,
     "ReLoRA's pretraining trains embeddings, norms and head"),
]


def _plan(*args, results_dir):
    return plan([*args, "run.device=cpu", "run.host_memory_limit_gib=null", f"run.results_dir={results_dir}"])


def _get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("method,model,key,value,source", TABLE, ids=lambda v: str(v)[:30])
def test_resolved_defaults_are_the_papers(method, model, key, value, source):
    """Resolved as planning resolves them (harness.config.plan), without the device checks, so that the YAMLs of
    CUDA-only reference packages are checked on a CPU host too."""
    config = _compose([f"method={method}", f"model={model}"])
    apply_recipe(config, set(), group_options("model"))
    resolve_auto_rank(config)
    assert _get(config["method"], key) == pytest.approx(value), source
    assert "recipes" not in config["method"]  # the job's config holds the values used, not the table


def test_the_command_line_and_a_whole_mapping_win_over_the_recipe(results_dir):
    (job,) = _plan("method=galore", "model=llama_1b", "method.optimizer.rank=64", results_dir=results_dir)
    assert job.config["method"]["optimizer"]["rank"] == 64 and job.recipe == ()
    (job,) = _plan("method=qgalore", "model=llama_60m", "method.optimizer.lr=0.002", results_dir=results_dir)
    assert job.config["method"]["optimizer"] | {"lr": 0.002, "rank": 128} == job.config["method"]["optimizer"]
    assert job.recipe == ("method.optimizer.rank=128",)


def test_a_key_the_overrides_set_is_left_as_given():
    """Keys of the command line and of a sweep's params arrive alike, as the `given` keys of the job's overrides."""
    config = {"model": {"name": "llama_1b"}, "method": {"name": "fira", "optimizer": {"rank": "auto", "scale": 0.25},
                                                          "recipes": {"llama_1b": {"optimizer": {"rank": 512,
                                                                                                 "scale": 0.0625}}}}}
    assert apply_recipe(config, {"method.optimizer.scale"}, ("llama_1b",)) == ("method.optimizer.rank=512",)
    assert config["method"]["optimizer"] == {"rank": 512, "scale": 0.25}


def test_a_model_without_a_recipe_keeps_the_yaml_and_rank_auto(results_dir):
    (job,) = _plan("method=galore", "model=llama_small", results_dir=results_dir)
    hidden = job.config["model"]["hidden_size"]
    assert job.config["method"]["optimizer"]["rank"] == hidden // 4 and job.recipe == ()
    (job,) = _plan("method=lowrank_pretrain", "model=llama_tiny", results_dir=results_dir)
    assert job.config["method"]["transform_options"]["factorized"]["rank"] == 16


@pytest.mark.parametrize("recipes,message", [
    ({"llama_61m": {"optimizer": {"rank": 8}}}, "method.recipes.llama_61m names no model"),
    ({"llama_60m": {"optimizer": {"rnk": 8}}}, "method.recipes.llama_60m: optimizer.rnk is no key of method galore"),
    ({"llama_60m": 128}, "must map model names to mappings of method keys"),
])
def test_a_recipe_table_with_a_typo_is_refused(recipes, message):
    config = {"model": {"name": "llama_60m"}, "method": {"name": "galore", "optimizer": {"rank": "auto"},
                                                           "recipes": recipes}}
    with pytest.raises(ConfigError, match=message):
        apply_recipe(config, set(), ("llama_60m", "llama_1b"))


def test_transform_rank_auto_needs_a_known_width():
    config = {"model": {"name": "hub"}, "method": {"optimizer": {}, "transform_options": {"lora": {"rank": "auto"}}}}
    with pytest.raises(ConfigError, match="method.transform_options.lora.rank=auto needs the model's hidden size"):
        resolve_auto_rank(config)


@pytest.mark.parametrize("steps,fraction,warmup", [(100, 0.1, 10), (35, 0.1, 4), (20, 0.0, 0), (20, 1.0, 20)])
def test_a_warmup_fraction_becomes_steps(steps, fraction, warmup, results_dir):
    (job,) = _plan(f"train.steps={steps}", f"train.lr_warmup_fraction={fraction}", results_dir=results_dir)
    assert job.spec.train.lr_warmup_steps == warmup


def test_cfg_job_shows_the_recipe_and_the_values(capsys, results_dir):
    from harness.run import main

    assert main(["--cfg", "job", "method=fira", "model=llama_1b", "run.device=cpu", "run.host_memory_limit_gib=null",
                 f"run.results_dir={results_dir}"]) == 0
    out = capsys.readouterr().out
    assert "# recipe of method fira for llama_1b: method.optimizer.rank=512, method.optimizer.scale=0.0625" in out
    assert "scale: 0.0625" in out and "recipes" not in out


def test_the_quality_sweep_plans_its_45_jobs_at_the_60m_recipes(results_dir, monkeypatch):
    """conf/sweep/quality_60m.yaml as a GPU host plans it (a GPU faked for planning): 9 methods x 5 seeds, quality runs
    at the papers' schedule, several jobs at once."""
    import yaml

    from harness import CONF_DIR

    dataset = yaml.safe_load((CONF_DIR / "dataset" / "wikitext2.yaml").read_text())
    if not all((CONF_DIR.parent / dataset[key]).is_file() for key in ("path", "eval_path")):
        pytest.skip("the wikitext-2 files are not at conf/dataset/wikitext2.yaml's paths on this machine")
    monkeypatch.setattr("harness.config.nvidia_gpu_count", lambda: 1)
    jobs = plan(["sweep=quality_60m", f"run.results_dir={results_dir}"])
    assert len(jobs) == 45 and {j.spec.train.seed for j in jobs} == {0, 1, 2, 3, 4}
    by_method = {j.spec.method.name: j for j in jobs}
    assert set(by_method) == {"adamw", "adamw8bit", "galore", "apollo", "apollo_mini", "fira", "frugal",
                              "lora_pretrain", "lowrank_pretrain"}
    train = jobs[0].spec.train
    assert train.lr_schedule == "cosine" and train.lr_warmup_steps == round(0.1 * train.steps)
    assert all(j.spec.quality.measure and 6 <= j.spec.run.parallel <= 9 for j in jobs)
    assert by_method["galore"].config["method"]["optimizer"]["rank"] == 128
    assert by_method["lowrank_pretrain"].config["method"]["transform_options"]["factorized"]["rank"] == 128
    assert len({j.run_id for j in jobs}) == 45


@pytest.mark.parametrize("method, where", [("apollo", ("optimizer",)), ("mezo", ("optimizer",)),
                                           ("apollo_mini_int8", ("transform_options", "int8_weights"))])
def test_a_parts_seed_follows_train_seed_unless_given(method, where, results_dir):
    """Projections, perturbations and rounding draw from the run's seed: a sweep over train.seed varies them too."""
    def seed_of(job):
        options = job.config["method"]
        for key in where:
            options = options[key]
        return options["seed"]

    jobs = _plan(f"method={method}", "-m", "train.seed=3,4", results_dir=results_dir)
    assert [seed_of(j) for j in jobs] == [3, 4]
    key = "method." + ".".join(where) + ".seed=11"
    (job,) = _plan(f"method={method}", "train.seed=3", key, results_dir=results_dir)
    assert seed_of(job) == 11
