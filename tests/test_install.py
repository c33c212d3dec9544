"""A non-editable install into a fresh venv, built the way a user's pip builds it, finds the grammar.

The venv gets its own pip (ensurepip) and builds with build isolation, as ``pip install .``
does on a user's machine: pip fetches the build backend that pyproject.toml asks for, so the
test passes both in a fresh venv (setuptools 65 and no ``wheel``) and on a machine where
packages were installed by hand. Only the runtime dependencies are borrowed from the
environment running the tests (a ``.pth`` line), so nothing is downloaded but the backend.
"""

import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _site_packages(env_dir: Path) -> Path:
    return env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.mark.slow
def test_installed_package_checks_a_spec_from_another_directory(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__",
                                                             ".pytest_cache", "runs", "*.onnx", ".venv", "venv"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    # the dependencies (numpy, lark, onnx...) come from the test environment, after the venv's own packages
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (_site_packages(env_dir) / "zz_outer_deps.pth").write_text("\n".join(outer) + "\n")
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(src / "grammar")  # prove the installed copy is used, not the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = ROOT / "specs" / "spirals.dnn"
    r = subprocess.run([str(env_dir / "bin" / "dnnspec"), "check", str(spec)], cwd=elsewhere,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "network spirals" in r.stdout and "trainable params:      4,547" in r.stdout
    where = subprocess.run([str(py), "-c", "import dnnspec, importlib.resources as r; print(dnnspec.__file__); "
                            "print(r.files('dnnspec.grammar').joinpath('dnnspec.lark').is_file())"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=60)
    path, found = where.stdout.split()
    assert str(env_dir) in path and found == "True"
