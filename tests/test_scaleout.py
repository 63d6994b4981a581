"""Past one process: jobs of several ranks (gloo on CPU, 2 ranks) and sweeps through submitit's local executor.

The rank tests fork their ranks from this process (as harness.compat does), so they cost no interpreter start-up;
the failure drill and the cluster sweep go through the command line, torchrun and submitit as a user's would.
"""
from __future__ import annotations

import json
import os
import socket
import types

import pytest

from harness import compat, ranks
from tests.helpers import FAST, rows_of, run_cli

TINY = compat.BASE + ["method=adamw", "train.batch_size=2", "train.eval_batches=2"]


def _fork_ranks(target, nproc: int, out) -> list[dict]:
    """Run target(rank) in nproc forked processes that form a gloo group; each returns a JSON-able dict."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pids = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            try:
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                (out / f"{rank}.json").write_text(json.dumps(target(rank)))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(nproc)]


def _ddp_and_single_gradients(rank: int) -> dict:
    """On each rank: gradients of one DDP step on this rank's half of the batch (harness.distributed), and on rank 0
    also those of one process on the whole batch, from the same initialization."""
    import torch
    import torch.distributed as dist

    from harness import distributed
    from harness.config import plan
    from harness.models import build_model

    torch.set_num_threads(1)
    (job,) = plan(TINY + ["train.distributed=ddp", "run.nproc=2"])
    spec, cpu = job.spec, torch.device("cpu")
    tokens = torch.randint(0, spec.model.vocab_size, (4096,), generator=torch.Generator().manual_seed(1))

    def gradients(model, batches) -> dict:
        for batch in batches:
            model(input_ids=batch, labels=batch).loss.backward()
        return {n: p.grad for n, p in (model.module if hasattr(model, "module") else model).named_parameters()}

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build_model(spec.model, torch.float32, cpu)
    ddp = gradients(distributed.wrap_model(spec, model, cpu), distributed.RankBatches(tokens, spec).next(cpu))
    out = {"rank_batch": list(distributed.RankBatches(tokens, spec).next(cpu)[0].shape)}
    if rank == 0:
        torch.manual_seed(0)
        single = build_model(spec.model, torch.float32, cpu)
        whole = distributed.data_lib.RandomWindows(tokens, 4, spec.train.seq_len, spec.train.seed).next()
        reference = gradients(single, [whole])
        out["max_abs_diff"] = max((ddp[n] - g).abs().max().item() for n, g in reference.items())
        out["max_abs_grad"] = max(g.abs().max().item() for g in reference.values())
    dist.destroy_process_group()
    return out


def test_ddp_gradients_equal_single_process_ones(tmp_path):
    results = _fork_ranks(_ddp_and_single_gradients, 2, tmp_path)
    assert [r["rank_batch"] for r in results] == [[2, 32], [2, 32]]  # each rank takes half of the batch of 4
    assert results[0]["max_abs_grad"] > 1e-3
    assert results[0]["max_abs_diff"] <= 1e-6 * results[0]["max_abs_grad"] * 100  # fp32 reduction order only


def test_fsdp2_shards_weights_and_optimizer_state_per_rank(tmp_path):
    probe = ["run.live_tensor_probe=true", f"run.results_dir={tmp_path}/rows"]
    single = compat.run_job(compat._plan_one(TINY + probe), tmp_path)
    sharded = compat.run_job(compat._plan_one(TINY + probe + ["train.distributed=fsdp2", "run.nproc=2"]), tmp_path)
    assert single["status"] == sharded["status"] == "ok", (single.get("error"), sharded.get("error"))
    assert sharded["world_size"] == 2 and sharded["per_rank"]["status"] == ["ok", "ok"]
    for key in ("weights", "optimizer_state"):
        for per_rank in sharded["per_rank"][key]:
            assert per_rank == pytest.approx(single[key] / 2, rel=0.01), key
        assert sharded[key] == max(sharded["per_rank"][key])  # the row reports the largest rank
    assert max(sharded["per_rank"]["cpu_live_peak"]) < single["cpu_live_peak"]  # the live-tensor probe's peak


def test_a_rank_that_raises_leaves_one_row_with_its_error(results_dir):
    proc = run_cli([*FAST, "train.distributed=ddp", "run.nproc=2", "run.inject_fault=raise",
                    "run.inject_fault_rank=1"], results_dir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (row,) = rows_of(results_dir)
    assert row["status"] == "error" and row["error"].startswith("rank 1: RuntimeError: injected fault")
    assert row["world_size"] == 2 and row["launcher"] == "torchrun" and row["per_rank"]["status"][1] == "error"


def test_merge_takes_the_largest_rank_and_the_global_throughput():
    a = {"status": "ok", "error": None, "weights": 10, "peak_allocated_forward": 7, "step_ms": 10.0,
         "tokens_per_s": 400.0, "train_loss": 2.0, "train_curve": [[0, 3.0]], "rank": 0}
    b = {**a, "weights": 12, "peak_allocated_forward": 5, "step_ms": 20.0, "tokens_per_s": 200.0, "train_loss": 4.0,
         "train_curve": [[0, 5.0]], "rank": 1}
    merged = ranks.merge([a, b], "")
    assert (merged["weights"], merged["peak_allocated_forward"], merged["per_rank"]["weights"]) == (12, 7, [10, 12])
    assert (merged["step_ms"], merged["tokens_per_s"], merged["train_loss"]) == (20.0, 200.0, 3.0)
    assert merged["train_curve"] == [[0, 4.0]] and merged["world_size"] == 2 and merged["status"] == "ok"
    lost = ranks.merge([a, None], "torchrun exited with code 1")
    assert lost["status"] == "error" and "rank(s) [1] wrote no result (torchrun exited with code 1)" in lost["error"]


def test_a_cluster_task_that_ended_without_a_row_gets_one_from_its_state(tmp_path):
    from harness import cluster
    from harness.config import plan

    (job,) = plan(TINY + [f"run.results_dir={tmp_path}"])
    job.job_dir.mkdir(parents=True)
    for state, status in [("TIMEOUT", "timeout"), ("PREEMPTED", "interrupted"), ("NODE_FAIL", "interrupted"),
                          ("OUT_OF_MEMORY", "oom"), ("FAILED", "error")]:
        task = types.SimpleNamespace(state=state, job_id="77_1", exception=lambda: RuntimeError("task died"))
        row = cluster.failure_row(job, {}, task)
        assert row["status"] == status and row["run_id"] == job.run_id and f"ended {state}" in row["error"]


def test_a_sweep_through_submitit_writes_one_row_per_job_and_resumes(results_dir):
    sweep = ["-m", "launcher=slurm", "launcher.cluster=local", *FAST, "train.seed=0,1", "sweep.name=cl"]
    first = run_cli(sweep, results_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = rows_of(results_dir, "cl")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"} and all(r.get("cluster_job_id") for r in rows)
    (results_dir / "cl" / "rows.jsonl").unlink()  # the controller was lost before it appended the rows
    resumed = run_cli(sweep, results_dir)  # merges what the cluster wrote, submits nothing
    assert resumed.returncode == 0 and "2 job(s) already had a row and were not resubmitted (2 of them merged from " \
        "the rows the cluster wrote)" in resumed.stdout and "submitted 0" not in resumed.stdout
    assert sorted(r["run_id"] for r in rows_of(results_dir, "cl")) == sorted(r["run_id"] for r in rows)


def test_the_slurm_keys_reach_sbatch(tmp_path, monkeypatch):
    """Hydra's submitit-launcher keys become the job array's #SBATCH lines (rendered by submitit, nothing submitted;
    a stand-in srun on PATH, as submitit looks for one)."""
    from harness import cluster
    from harness.config import plan

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    jobs = plan(["launcher=slurm", "launcher.partition=gpu", "launcher.account=proj", "launcher.qos=high",
                 "launcher.constraint=h100", "launcher.mem_gb=64", "launcher.cpus_per_task=16",
                 "launcher.timeout_min=30", "+launcher.additional_parameters.exclusive=true",
                 "launcher.setup=[module load cuda]", f"run.results_dir={tmp_path}", "run.device=auto",
                 "train.distributed=ddp", "run.nproc=2"])
    sbatch = cluster.executor(jobs, tmp_path / "adhoc")._executor._make_submission_file_text("true", "%j")
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--constraint=h100", "--mem=64GB",
                 "--cpus-per-task=16", "--time=30", "--exclusive", "--gpus-per-node=2", "--ntasks-per-node=1",
                 "--job-name=membench-adhoc", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert "\nmodule load cuda\n" in sbatch
