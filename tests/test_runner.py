"""End to end through the CLI: a CPU sweep of the four spine methods, the probe's exact numbers, resume, CLI errors."""
import json

import pytest

from tests.helpers import FAST, rows_of, run_cli

METHODS = ["adamw", "sgd", "adafactor", "adamw_ckpt"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("sweep") / "results"
    fast = [o for o in FAST if o != "run.estimate=false"]  # the one CLI sweep that traces each job's estimate
    proc = run_cli(["-m", f"method={','.join(METHODS)}", *fast], results_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results_dir, proc, {r["method"]: r for r in rows_of(results_dir)}


def test_all_rows_ok_with_provenance(sweep):
    _, proc, rows = sweep
    assert sorted(rows) == sorted(METHODS)
    for row in rows.values():
        assert row["status"] == "ok", row["error"]
        assert row["device"] == "cpu" and row["pkg_torch"] and row["git_sha"] and row["hostname"]
        for key in ("weights", "grads", "optimizer_state", "activations", "cpu_live_peak"):
            assert isinstance(row[key], int), key
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and row["eval_loss"] > 0
        stages = [row[k] for k in ("startup_s", "load_s", "data_s", "train_s", "eval_s")]
        assert all(t > 0 for t in stages) and sum(stages) < row["wall_s"]  # where the wall time goes
        assert row["verdict"] in ("learned", "not_learning") and row["verdict_reason"].startswith("memory run")
        assert row["estimate_peak"] > 0 and "estimate_error" not in row  # every row predicts its peak
    assert "status counts: ok=4" in proc.stdout


def test_adamw_state_is_exactly_two_moments_plus_step_counters(sweep):
    row = sweep[2]["adamw"]
    param_bytes = row["n_trainable"] * 4  # fp32 on CPU
    config = row["config"]["model"]
    n_tensors = 1 + 9 * config["num_hidden_layers"] + 1 + 1  # embed, 9 per layer, final norm, lm_head
    assert row["optimizer_state"] == 2 * param_bytes + 4 * n_tensors  # m and v, plus a float32 step per tensor
    assert row["grads"] == param_bytes


def test_sgd_without_momentum_keeps_no_state(sweep):
    assert sweep[2]["sgd"]["optimizer_state"] == 0


def test_adafactor_state_far_below_adamw(sweep):
    rows = sweep[2]
    assert rows["adafactor"]["optimizer_state"] < rows["adamw"]["optimizer_state"] / 10


def test_checkpointing_lowers_measured_activations(sweep):
    rows = sweep[2]
    assert rows["adamw_ckpt"]["activations"] < 0.7 * rows["adamw"]["activations"]
    assert rows["adamw_ckpt"]["cpu_live_peak"] < rows["adamw"]["cpu_live_peak"]
    assert rows["adamw_ckpt"]["optimizer_state"] == rows["adamw"]["optimizer_state"]


def test_report_written(sweep):
    results_dir = sweep[0]
    report = results_dir / "adhoc" / "report"
    for name in ("table.csv", "table.md", "memory_breakdown.png", "throughput.png"):
        assert (report / name).stat().st_size > 0, name
    assert not list(report.glob("pareto_*")), "a memory sweep draws no loss axis"


def test_rerun_skips_existing_rows_and_force_reruns(sweep):
    results_dir = sweep[0]
    proc = run_cli(["method=sgd", *FAST], results_dir)
    assert proc.returncode == 0 and "already had a row" in proc.stdout
    assert len(rows_of(results_dir)) == 4
    proc = run_cli(["method=sgd", "run.force=true", *FAST], results_dir)
    assert proc.returncode == 0 and len(rows_of(results_dir)) == 5


def test_job_folder_holds_config_row_and_log(sweep):
    results_dir = sweep[0]
    folder = next((results_dir / "adhoc").glob("*method=adamw,*"))
    assert json.loads((folder / "job.json").read_text())["config"]["method"]["name"] == "adamw"
    assert json.loads((folder / "row.json").read_text())["status"] == "ok"
    assert "status=ok" in (folder / "log.txt").read_text()


def test_unknown_method_exits_nonzero_with_one_line_and_no_row(tmp_path):
    proc = run_cli(["method=nope"], tmp_path / "results")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "adamw" in lines[0] and "adafactor" in lines[0] and "sgd" in lines[0]
    assert not (tmp_path / "results").exists()


def test_a_fork_server_that_cannot_start_falls_back_to_spawned_jobs(tmp_path, monkeypatch, capsys):
    from harness import launch
    from harness.config import plan
    from harness.run import run_sweep

    def broken(self, log_path, ready_timeout_s=600.0):
        raise launch.ForkServerFailed(f"the fork server did not start; see {log_path}")

    monkeypatch.setattr(launch.Zygote, "__init__", broken)
    rows = run_sweep(plan(["-m", *FAST, f"run.results_dir={tmp_path}", "train.seed=1,2"]), progress=False)
    assert [(r["status"], r["launcher"]) for r in rows] == [("ok", "spawn"), ("ok", "spawn")]
    assert capsys.readouterr().err.count("spawning a fresh interpreter per job instead") == 1


def test_forked_jobs_get_the_launchers_environment_at_their_start(tmp_path, monkeypatch):
    """Jobs forked from one server see the launcher's environment as it is when each starts."""
    from harness import launch
    from harness.config import plan

    first, second = plan(["-m", *FAST, f"run.results_dir={tmp_path}", "train.seed=1,2"])
    try:
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        row_first = launch.run_job(first, {})
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")
        row_second = launch.run_job(second, {})
    finally:
        launch.stop_servers()
    assert row_first["status"] == row_second["status"] == "ok" and row_first["launcher"] == "fork"
    assert (row_first["pytorch_cuda_alloc_conf"], row_second["pytorch_cuda_alloc_conf"]) == (
        "expandable_segments:True", "backend:native")


def test_a_fork_server_that_dies_while_importing_falls_back_too(tmp_path, monkeypatch):
    from harness import launch
    from harness.config import plan
    from harness.run import run_sweep

    monkeypatch.setattr(launch.sys, "executable", "/bin/false")  # the server exits at once; spawned jobs need
    monkeypatch.setattr(launch, "_wait_spawned", lambda job, log_path, env: 0)  # no interpreter here
    rows = run_sweep(plan([*FAST, f"run.results_dir={tmp_path}"]), progress=False)
    assert rows[0]["launcher"] == "spawn" and rows[0]["status"] == "error"  # spawned "job" wrote no result


def test_the_fork_servers_imports_answer_device_queries_without_initializing_cuda(monkeypatch):
    """On the H100 host torchao's import asked torch.cuda.get_device_capability() and has_triton(), which initialize
    CUDA (and then no forked job could use it). Inside the server's import block both are answered without CUDA, and
    restored afterwards."""
    import torch
    import torch._inductor.config as inductor_config
    import torch.utils._triton

    from harness import zygote

    initialized = []
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: initialized.append(True))
    monkeypatch.setattr(zygote, "_nvml_capability", lambda device=None: (9, 0))
    original = torch.cuda.get_device_capability
    torch.utils._triton.has_triton.cache_clear()
    with zygote._device_queries_without_cuda(torch), zygote._cuda_init_caller(torch) as callers:
        assert torch.cuda.get_device_capability() == (9, 0)
        assert torch.utils._triton.has_triton() is False
    assert torch.cuda.get_device_capability is original and not inductor_config.triton_disable_device_detection
    assert torch.utils._triton.has_triton.cache_info().currsize == 0 and not initialized and not callers
    with zygote._cuda_init_caller(torch) as callers:
        torch.cuda._lazy_init()
    assert initialized and "test_runner.py" in callers[0]  # the error message names the caller
