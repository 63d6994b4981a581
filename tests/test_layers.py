"""The layers conf → harness → methods → kernels: no module imports a layer above its own, imports inside functions
included (a lazy import is still a dependency)."""
import ast

import pytest

from tests.helpers import ROOT

# folder → the top-level names its modules must not import; `kernels` nowhere: our kernels/ installs as
# membench_kernels, and a top-level `kernels` is Hugging Face's package
FORBIDDEN = {"kernels": {"methods", "harness", "kernels"}, "methods": {"harness", "kernels"}, "harness": {"kernels"}}


def imported_names(path) -> set[str]:
    """Top-level package of every absolute import in the module, at any depth of the tree."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_import_no_higher_one(folder):
    modules = sorted((ROOT / folder).rglob("*.py"))
    assert modules
    wrong = {str(p.relative_to(ROOT)): sorted(imported_names(p) & FORBIDDEN[folder]) for p in modules}
    assert not {p: names for p, names in wrong.items() if names}


def test_imports_inside_functions_are_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import torch\n\ndef f():\n    from harness.schema import ConfigError\n    import methods.quant\n")
    assert imported_names(module) == {"torch", "harness", "methods"}


def test_kernels_is_no_regular_package():
    """kernels/ has no __init__.py: in the source tree it is a namespace portion, so Hugging Face's `kernels`
    package wins where installed (tests/test_packaging.py checks that transformers does not see ours)."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
