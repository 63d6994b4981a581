"""Bad input: one clear line (what was wrong, what is allowed), exit code 2, no row and no file.

CASES is the table in docs/bad-input.md; a test checks that the two agree."""
import re

import pytest

from harness.config import plan
from harness.schema import ConfigError
from tests.helpers import ROOT, run_cli

# (case, overrides; {tmp} is a scratch folder, message that must appear)
CASES = [
    ("unknown method", ["method=nope"], "unknown method 'nope'; allowed methods: adafactor, adamw"),
    ("unknown model", ["model=llama_3b"], "unknown model 'llama_3b'; allowed models:"),
    ("unknown dataset", ["dataset=c5"], "unknown dataset 'c5'; allowed datasets:"),
    ("unknown gpu", ["gpu=tpu"], "unknown gpu 'tpu'; allowed gpus: a100_80gb, auto, cpu"),
    ("unknown key", ["train.foo=1"], "unknown key 'train.foo'; allowed keys under train: batch_size"),
    ("unknown optimizer option", ["+method.optimizer.momentum=0.9"],
     "unknown key 'method.optimizer.momentum'; allowed keys in method.optimizer"),
    ("unknown transform", ["method.transforms=[nope]"], "unknown method.transforms entry 'nope'; allowed:"),
    ("batch size <= 0", ["train.batch_size=0"], "train.batch_size=0 is invalid; it must be >= 1"),
    ("seq_len above the model's positions", ["train.seq_len=4096"],
     "exceeds model llama_tiny's max_position_embeddings=512"),
    ("warm-up leaves no timed step", ["train.steps=3", "train.warmup_steps=3"], "must be < train.steps=3"),
    ("wrong value type", ["method.optimizer.lr=fast"], "method.optimizer.lr='fast' is invalid; expected float"),
    ("dtype not known", ["train.dtype=fp8"], "train.dtype='fp8' is invalid; expected one of auto, fp32, bf16, fp16"),
    ("dtype unsupported on the device", ["train.dtype=fp16", "run.device=cpu"],
     "train.dtype=fp16 is not supported on run.device=cpu"),
    ("CUDA asked for, none visible", ["run.device=cuda"], "run.device=cuda but no NVIDIA GPU is visible"),
    ("generate with a training method", ["scenario=generate", "method=adamw"],
     "method adamw has no method.cache, so scenario=generate cannot run it"),
    ("training with a generate method", ["method=kivi2"], "method kivi2 is a generate method"),
    ("batch_size=auto without a budget", ["scenario=generate", "method=kv_full", "infer.batch_size=auto"],
     "infer.batch_size=auto needs infer.memory_budget_gib"),
    ("training batch_size=auto on the CPU without a budget", ["train.batch_size=auto"],
     "train.batch_size=auto on the CPU needs train.memory_budget_gib"),
    ("training memory budget not positive", ["train.batch_size=auto", "train.memory_budget_gib=0"],
     "train.memory_budget_gib=0 is invalid; it must be > 0 or null"),
    ("prompt + decode above the model's positions", ["scenario=generate", "method=kv_full", "infer.prompt_len=500",
                                                      "infer.decode_len=100"],
     "infer.prompt_len + infer.decode_len (or infer.fidelity_len) = 600 exceeds model llama_tiny's"),
    ("KIVI bits other than 2 or 4", ["scenario=generate", "method=kivi2", "method.cache_options.bits=3"],
     "method.cache_options.bits=3 is invalid; it must be 2 or 4"),
    ("method that needs CUDA on a CPU run", ["method=galore_torch8bit", "model=llama_60m", "run.device=cpu"],
     "method galore_torch8bit needs CUDA"),
    ("dataset vocab above the model's", ["dataset.vocab_size=5000"], "has 5000 token ids but model llama_tiny"),
    ("missing mandatory value", ["model=hub"], "model.hub_name must be set"),
    ("missing data file", ["dataset=text_file", "dataset.path={tmp}/none.txt"], "dataset.path: file not found"),
    ("empty data file", ["dataset=text_file", "dataset.path={tmp}/empty.txt"], "dataset.path: file is empty"),
    ("non-UTF-8 data file", ["dataset=text_file", "dataset.path={tmp}/latin1.txt"], "dataset.path: not UTF-8 text"),
    ("results folder not writable", ["run.results_dir={tmp}/empty.txt/results"], "is not writable"),
    ("sweep without -m", ["method=adamw,sgd"], "is a sweep; add -m"),
    ("conflicting overrides", ["method=adamw", "method=sgd"], "conflicting overrides: method is given 2 times"),
    ("several ranks without a strategy", ["run.nproc=2"], "run.nproc=2 needs train.distributed"),
    ("strategy not known", ["train.distributed=zero4"], "train.distributed='zero4' is invalid; expected one of none, ddp"),
    ("layer-wise update with gradient accumulation", ["method=galore_layerwise", "train.grad_accum=2"],
     "the layer-wise update steps each parameter inside backward"),
    ("layer-wise update under DDP", ["method.loop=layerwise", "train.distributed=ddp", "run.nproc=2"],
     "before DDP's all-reduce of it"),
    ("zeroth-order method on several ranks", ["method=mezo", "train.distributed=fsdp2", "run.nproc=2"],
     "a zeroth-order step computes no gradient for the ranks to reduce"),
    ("launcher swept", ["launcher=local,slurm"], "launcher= says where the whole sweep runs; give one"),
    ("INT8 weights with gradient accumulation", ["method=apollo_mini_int8", "train.grad_accum=2"],
     "its INT8 layers apply the update inside their own backward"),
    ("multi-node cluster job", ["launcher=slurm", "launcher.nodes=2"], "a cluster job is one task on one node"),
    ("malformed sweep spec", ["-m", "method=adamw,,sgd"], "malformed override"),
    ("unknown flag", ["--verbose"], "unknown flag '--verbose'"),
    ("not an override", ["method"], "'method' is not an override"),
    ("repeats < 1", ["run.repeats=0"], "run.repeats=0 is invalid; it must be >= 1"),
    ("bad sweep name", ["sweep.name=a/b"], "sweep.name='a/b' is invalid"),
    ("INT8 weights with an optimizer that cannot update them", ["method.transforms=[int8_weights]"],
     "optimizer adamw cannot update INT8 weights; allowed with int8_weights: galore"),
    ("rank above a matrix dimension", ["method=galore", "method.optimizer.rank=65"],
     "method.optimizer.rank=65 exceeds the smallest side (64) of the projected matrices of model llama_tiny"),
    ("fused-loss filter with label smoothing", ["method=adamw_fused_ce", "method.transform_options.fused_ce.filter_eps"
                                                "=0.001", "method.transform_options.fused_ce.label_smoothing=0.1"],
     "filtering needs 0 < filter_eps < 1 and label_smoothing=0"),
    ("unknown GaLore projection", ["method=galore", "method.optimizer.projection=qr"],
     "method.optimizer.projection"),
    ("model weights over the host memory limit of a CPU job", ["model=llama_7b", "run.device=cpu",
                                                               "run.host_memory_limit_gib=8"],
     "model llama_7b's weights alone take 25.1 GiB (6.74 B parameters, train.dtype=auto), over the 8.0 GiB of the "
     "host memory limit of a CPU job (run.host_memory_limit_gib=8)"),
    ("host memory limit not > 0", ["run.host_memory_limit_gib=0"], "run.host_memory_limit_gib=0 is invalid"),
    ("a GPU's figures for a CPU job", ["gpu=h100", "run.device=cpu"],
     "gpu=h100 gives a GPU's figures but the job runs on the CPU (run.device=cpu); use gpu=auto or gpu=cpu there"),
    ("a Hydra key that lives elsewhere here", ["hydra.run.dir=/tmp/x"], "unknown key 'hydra.run.dir'; use run.results_dir"),
    ("a training-script key that lives elsewhere here", ["train.lr=0.1"],
     "unknown key 'train.lr'; use method.optimizer.lr"),
    ("glob matching no option", ["-m", "method=glob(zz*)"], "'method=glob(zz*)' matches no method; allowed methods:"),
    ("glob over a key that is no config group", ["-m", "train.seed=glob(*)"],
     "glob(...) selects options of a config group"),
    ("a sweep of named sweeps", ["-m", "sweep=none,gate_cpu"], "sweep= names one sweep; run each named sweep by itself"),
    ("sweep name longer than the file system allows", ["sweep.name=" + "a" * 300],
     "sweep.name: the folder name 'aaaa"),
    ("results folder name longer than the file system allows", ["run.results_dir={tmp}/" + "b" * 300],
     "run.results_dir: the folder name 'bbbb"),
    ("results folder that cannot be created", ["run.results_dir=/proc/membench/results"],
     "run.results_dir=/proc/membench/results is not writable"),
    ("negative learning rate", ["method.optimizer.lr=-0.1"],
     "method.optimizer.lr=-0.1 is invalid; it must be finite and > 0"),
    ("learning rate nan", ["method.optimizer.lr=nan"], "method.optimizer.lr=nan is invalid; it must be finite"),
    ("infinite number in any section", ["run.timeout_s=inf"], "run.timeout_s=inf is invalid; it must be finite"),
    ("Adam beta outside [0, 1)", ["method.optimizer.betas=[0.9,1.0]"],
     "method.optimizer.betas=[0.9, 1.0] is invalid; it must be two numbers in [0, 1)"),
    ("projection refresh interval < 1", ["method=galore", "method.optimizer.update_gap=0"],
     "method.optimizer.update_gap=0 is invalid; it must be an integer >= 1"),
    ("8-bit block size not a power of two", ["method=adamw8bit", "method.optimizer.block_size=100"],
     "method.optimizer.block_size=100 is invalid; it must be a power of two"),
    ("option seed out of range", ["method=mezo", "method.optimizer.seed=-1"],
     "method.optimizer.seed=-1 is invalid; it must be an integer in [0, 2**32)"),
    ("LoRA rank < 1", ["method=lora", "method.transform_options.lora.rank=0"],
     "method.transform_options.lora.rank=0 is invalid; it must be an integer >= 1"),
    ("LoRA rank above a target layer's side", ["method=lora", "method.transform_options.lora.rank=65"],
     "method.transform_options.lora.rank=65 exceeds the smallest side (64) of the target layers of model llama_tiny"),
    ("transform target that is no layer of the model", ["method=lora", "method.transform_options.lora.targets=[qproj]"],
     "names 'qproj', which is no linear layer of model llama_tiny; allowed: q_proj"),
    ("two transforms that replace the same layers", ["method.transforms=[lora,qlora]"],
     "method.transforms: lora and qlora both replace the target linear layers"),
    ("two transforms that hook the saved activations", ["method.transforms=[compress_activations,offload_activations]"],
     "compress_activations and offload_activations both replace the decoder's saved-tensor hooks"),
    ("a transform named twice", ["method.transforms=[checkpointing,checkpointing]"],
     "names checkpointing twice; each transform applies once"),
    ("LISA layers above the model's", ["method=lisa", "method.optimizer.active_layers=3"],
     "method.optimizer.active_layers=3 exceeds model llama_tiny's 2 layers"),
    ("seed out of range", ["train.seed=-1"], "train.seed=-1 is invalid; seeds are integers in [0, 2**32)"),
    ("LR warm-up longer than the run", ["train.lr_warmup_steps=21"],
     "train.lr_warmup_steps=21 must be <= train.steps=20"),
    ("LR warm-up fraction outside [0, 1]", ["train.lr_warmup_fraction=1.5"],
     "train.lr_warmup_fraction=1.5 is invalid; it must be in [0, 1]"),
    ("LR warm-up given as steps and as a fraction", ["train.lr_warmup_steps=2", "train.lr_warmup_fraction=0.1"],
     "train.lr_warmup_steps=2 and train.lr_warmup_fraction=0.1 both set the warm-up; give one"),
    ("jobs at once < 1", ["run.parallel=0"], "run.parallel=0 is invalid; it must be >= 1"),
    ("odd attention head size", ["model.hidden_size=72", "model.num_attention_heads=8"],
     "is an odd head size; RoPE needs an even one"),
    ("GPU figure <= 0", ["gpu.memory_bytes=-1"], "gpu.memory_bytes=-1 is invalid; it must be > 0"),
    ("data file shorter than one window", ["dataset=text_file", "dataset.path={tmp}/one.txt"],
     "the training split has 0 tokens"),
    ("held-out split smaller than one eval batch", ["dataset=text_file", "dataset.path={tmp}/short.txt",
                                                    "dataset.tokenizer=bytes"], "the held-out split has 200 tokens"),
    ("held-out split shorter than one window in a quality run", ["quality.measure=true", "quality.eval_tokens=100"],
     "a quality run evaluates min(quality.eval_tokens=100, the held-out split's 65536 tokens"),
    ("hub tokenizer without a name", ["dataset=text_file", "dataset.path={tmp}/short.txt", "dataset.tokenizer=hub"],
     "dataset.tokenizer=hub needs dataset.tokenizer_name"),
    ("tokenizer name without the hub tokenizer", ["dataset=text_file", "dataset.path={tmp}/short.txt",
                                                  "dataset.tokenizer_name=gpt2"],
     "dataset.tokenizer_name is read with dataset.tokenizer=hub only, not dataset.tokenizer=bpe"),
    ("hub tokenizer not on this machine", ["dataset=text_file", "dataset.path={tmp}/short.txt", "dataset.tokenizer=hub",
                                           "dataset.tokenizer_name=no-org/no-tokenizer"],
     "dataset.tokenizer_name=no-org/no-tokenizer: no tokenizer of that name on this machine"),
    ("BPE for a model whose vocabulary planning cannot know", ["model=hub", "model.hub_name=some-org/some-model",
                                                               "dataset=text_file", "dataset.path={tmp}/short.txt"],
     "dataset.tokenizer=bpe trains to the model's vocab_size, which model hub does not give while planning"),
    ("model vocabulary below the tokenizer's", ["dataset=text_file", "dataset.path={tmp}/short.txt",
                                                "model.vocab_size=200"],
     "dataset.tokenizer=bpe gives 256 token ids but model llama_tiny has vocab_size=200"),
    ("synthetic corpus shorter than one window", ["model=llama_60m", "train.seq_len=1024", "dataset.train_tokens=1024"],
     "the training split has 1024 tokens (dataset.train_tokens); one window needs train.seq_len+1=1025"),
    ("folder given as the data file", ["dataset=text_file", "dataset.path={tmp}"], "is a folder; give a text file"),
    ("folder given as the eval file", ["dataset=text_file", "dataset.path={tmp}/short.txt", "dataset.eval_path={tmp}"],
     "is a folder; give a text file"),
    ("hub model path that is no folder", ["model=hub", "model.hub_name=/nonexistent/model"],
     "model.hub_name=/nonexistent/model is a path but no folder is there"),
    ("hub model folder without config.json", ["model=hub", "model.hub_name={tmp}"],
     "is a folder without config.json"),
    ("held-out eval tokens < 1", ["quality.eval_tokens=0"], "quality.eval_tokens=0 is invalid; it must be >= 1"),
    ("eval interval < 0", ["quality.eval_every=-1"], "quality.eval_every=-1 is invalid; it must be >= 0"),
    ("not-learning fraction outside (0, 1)", ["quality.not_learning_fraction=1.5"],
     "quality.not_learning_fraction=1.5 is invalid; it must be in (0, 1)"),
    ("resume from a rows file that is not there", ["run.resume_from=[nowhere.rows.jsonl]"],
     "run.resume_from: no rows file at"),
    ("low-rank target that matches no matrix", ["method=galore", "method.optimizer.target_modules=[nope]"],
     "method.optimizer.target_modules=['nope']: 'nope' is part of no matrix name of model llama_tiny"),
    ("checkpoint model without a folder or base", ["model=checkpoint"], "model=checkpoint needs model.path"),
    ("checkpoint folder without config.json", ["model=checkpoint", "model.path={tmp}"],
     "no readable config.json"),
    ("saving a model whose layers a transform replaced", ["method=lora", "train.save_checkpoint=true"],
     "train.save_checkpoint=true saves the model with save_pretrained, but method lora replaces its linear layers"),
    ("finetuning a randomly initialized model", ["scenario=finetune"],
     "scenario=finetune starts from a pretrained model; model llama_tiny is built with random weights"),
    ("a base that is a sweep", ["model=checkpoint", "model.base=['method=adamw,sgd']"], "model.base: "),
    ("task with one label word", ["dataset=corpus_source", "dataset.labels=[' A']"],
     "dataset.labels=[' A'] is invalid; give at least two distinct label words"),
]


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (tmp_path / "one.txt").write_bytes(b"a")
    (tmp_path / "short.txt").write_bytes(b"0123456789" * 200)  # 1800 tokens train, 200 held out (< 8 x 128)
    return tmp_path


def _args(args, scratch):
    return [a.replace("{tmp}", str(scratch)) for a in args]


@pytest.mark.parametrize("case,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, args, message, scratch, results_dir):
    if case == "CUDA asked for, none visible":
        from harness.config import nvidia_gpu_count
        if nvidia_gpu_count():
            pytest.skip("a GPU is visible here")
    args = _args(args, scratch)
    if not any(a.startswith("run.results_dir") for a in args):
        args.append(f"run.results_dir={results_dir}")
    with pytest.raises(ConfigError) as info:
        plan(args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not results_dir.exists()


def test_cli_exit_code_and_single_stderr_line(tmp_path):
    proc = run_cli(["dataset=text_file", f"dataset.path={tmp_path}/missing.txt"], tmp_path / "results")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "file not found" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_unreadable_data_file_is_one_line(scratch, results_dir, monkeypatch):
    """A file the user may not read (permission bits do not stop root, so the read itself is made to fail)."""
    import harness.data

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(harness.data, "read_text", refuse)
    with pytest.raises(ConfigError, match=r"^dataset.path: cannot read .*short.txt: Permission denied$"):
        plan(["dataset=text_file", f"dataset.path={scratch}/short.txt", f"run.results_dir={results_dir}"])
    assert not results_dir.exists()


def test_cli_says_nan_for_nan(tmp_path):
    """nan and inf never reach a job (its config is JSON, where they would become null): the plan names them."""
    proc = run_cli(["method.optimizer.lr=nan"], tmp_path / "results")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: method.optimizer.lr=nan is invalid; it must be finite (not nan or inf)"
    assert not (tmp_path / "results").exists()


def test_docs_list_every_case():
    table = (ROOT / "docs" / "bad-input.md").read_text()
    listed = set(re.findall(r"^\| ([^|]+?) \|", table, flags=re.M)) - {"case", "---"}
    assert {c[0] for c in CASES} <= listed, sorted({c[0] for c in CASES} - listed)
    assert len(CASES) >= 20
