"""Packaging: the wheel ships the configs and no top-level `kernels` (ours installs as membench_kernels), and a
`kernels` package installed beside membench (Hugging Face's) is the one Python and transformers find, from the source
tree as from anywhere else."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

from tests.helpers import ROOT

FAKE_VERSION = "0.99.1"

# run with `python -c` from a folder: that folder comes first on sys.path, as with `python -m harness.run`
PROBE = """
from transformers.utils.import_utils import _is_package_available
import kernels, membench_kernels.quant
from harness import CONF_DIR
print(kernels.__file__, _is_package_available("kernels", return_version=True), CONF_DIR.is_dir())
"""


def _fake_hf_kernels(site):
    """A regular package `kernels` with distribution metadata, as `pip install kernels` leaves it."""
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(f"__version__ = {FAKE_VERSION!r}\n")
    info = site / f"kernels-{FAKE_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kernels\nVersion: {FAKE_VERSION}\n")
    (info / "top_level.txt").write_text("kernels\n")


def test_an_installed_kernels_package_wins_over_our_folder(tmp_path):
    site = tmp_path / "site"
    _fake_hf_kernels(site)
    for cwd in (ROOT, tmp_path):
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(site)})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0] == str(site / "kernels" / "__init__.py")
        assert f"(True, '{FAKE_VERSION}') True" in proc.stdout


def test_transformers_does_not_take_our_folder_for_kernels():
    """Without Hugging Face's package, transformers finds no `kernels` (it used to read membench's version)."""
    probe = ("import importlib.metadata as md; from transformers.utils.import_utils import _is_package_available; "
             "print(_is_package_available('kernels', return_version=True), md.packages_distributions().get('kernels'))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "membench" not in proc.stdout
    if not any(d.metadata["Name"] == "kernels" for d in importlib.metadata.distributions()):
        assert proc.stdout.strip() == "(False, 'N/A') None"


def test_wheel_ships_the_configs_and_no_top_level_kernels(tmp_path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("harness", "methods", "kernels", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("membench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"harness", "methods", "membench_kernels", "membench_conf"}
    yamls = {n.removeprefix("membench_conf/") for n in names if n.endswith(".yaml")}
    assert yamls == {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {"membench_kernels/quant.py", "harness/benches/timing.py", "harness/parts.py"} <= set(names)
