"""The notebooks run top to bottom on the committed rows (outputs are not committed)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from harness import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_overview", "02_pareto", "03_memory_breakdown", "04_kernels"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_has_no_committed_outputs(path: Path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "strip outputs before commit"
    monkeypatch.setenv("MEMBENCH_FIGURES_DIR", str(tmp_path))
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}).execute()
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "rows from" in text and " 0 rows" not in text
    if path.stem != "01_overview":
        assert list(tmp_path.rglob("*.png")), "the notebook draws its plots"
