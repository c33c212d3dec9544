"""A non-editable install into a fresh venv finds the grammar (installed as dnnspec.grammar)."""

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_package_checks_a_spec_from_another_directory(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__",
                                                             ".pytest_cache", "runs", "*.onnx"))
    env_dir = tmp_path / "venv"
    # no pip of its own: the system pip and setuptools (which builds wheels itself) are used
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
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
