"""Benchmark harness for memory-efficient deep-learning methods: config → isolated job → probes → result row.

PROJECT_ROOT anchors relative paths (a dataset's `path`, `run.results_dir`, the committed results): the source tree
when the harness is imported from one (a clone, installed editable or not at all), else the current working
directory, since an installed copy lives in site-packages, where results do not belong and relative data paths mean
nothing. CONF_DIR is the source tree's conf/ when there is one (edits to the YAMLs take effect without reinstalling),
else the copy installed with the package as `membench_conf`.
"""
from pathlib import Path

_SOURCE_TREE = Path(__file__).resolve().parent.parent
_IN_SOURCE_TREE = (_SOURCE_TREE / "pyproject.toml").is_file() and (_SOURCE_TREE / "conf").is_dir()

PROJECT_ROOT = _SOURCE_TREE if _IN_SOURCE_TREE else Path.cwd()


def _conf_dir() -> Path:
    if _IN_SOURCE_TREE:
        return _SOURCE_TREE / "conf"
    import membench_conf  # a data-only package without __init__.py: its __path__ names the folder

    return Path(next(iter(membench_conf.__path__)))


CONF_DIR = _conf_dir()
