import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def tokenizer_cache(tmp_path_factory):
    """Tokenizers the tests train (harness/tokenizer.py) go to a scratch folder, not the user's cache; jobs started as
    subprocesses inherit it."""
    os.environ["MEMBENCH_TOKENIZER_CACHE"] = str(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture
def results_dir(tmp_path):
    """A fresh results folder per test, passed to jobs as run.results_dir."""
    return tmp_path / "results"


def pytest_configure(config):
    """Triton kernels run through the interpreter on a machine without CUDA (set before triton is imported)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def no_fork_server_left_behind():
    """A test that launches jobs in this process must not hand its fork server (harness/zygote.py) to the next."""
    yield
    from harness.launch import stop_servers

    stop_servers()
