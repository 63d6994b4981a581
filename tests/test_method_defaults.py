"""Every method's YAML plans on the default model as it ships (rank: auto fits the model's width); a method that
needs CUDA is refused on a CPU run with the one line that says so."""
import pytest

from harness.config import group_options, plan
from harness.schema import ConfigError


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_plans_on_the_default_model(method, results_dir):
    import yaml

    from harness import CONF_DIR

    generate = "cache" in yaml.safe_load((CONF_DIR / "method" / f"{method}.yaml").read_text())
    args = [f"method={method}", "run.device=cpu", f"run.results_dir={results_dir}"] + ["scenario=generate"] * generate
    try:
        (job,) = plan(args)
    except ConfigError as e:
        assert f"method {method} needs CUDA" in str(e), str(e)
        return
    assert job.spec.method.name == method


@pytest.mark.parametrize("model,rank", [("llama_tiny", 16), ("llama_60m", 128), ("llama_1b", 512)])
def test_rank_auto_is_a_quarter_of_the_hidden_size_in_the_jobs_config(model, rank, results_dir):
    (job,) = plan(["method=galore", f"model={model}", "run.device=cpu", "run.host_memory_limit_gib=null",
                   f"run.results_dir={results_dir}"])
    assert job.config["method"]["optimizer"]["rank"] == rank == job.spec.method.optimizer["rank"]


def test_rank_auto_on_a_model_of_unknown_width_is_refused(results_dir):
    with pytest.raises(ConfigError, match="method.optimizer.rank=auto needs the model's hidden size"):
        plan(["method=galore", "model=hub", "model.hub_name=gpt2", "run.device=cpu", f"run.results_dir={results_dir}"])
