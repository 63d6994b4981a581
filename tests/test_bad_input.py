"""Bad input: one clear line (what was wrong, what is allowed), exit code 2, no row and no file.

CASES is the table in README.md ("Bad input"); a test checks that the two agree."""
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
]


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
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


def test_readme_lists_every_case():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Bad input"):]
    listed = set(re.findall(r"^\| ([^|]+?) \|", table, flags=re.M)) - {"case", "---"}
    assert {c[0] for c in CASES} <= listed, sorted({c[0] for c in CASES} - listed)
    assert len(CASES) >= 20
