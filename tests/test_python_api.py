"""The top-level Python API: dnnspec.compile/load/export/Predictor/evaluate/load_data, light imports, its doc."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnspec
from dnnspec import ir

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "onnxruntime", "tqdm", "matplotlib", "tensorboard", "mlflow", "sklearn", "PIL")


def loaded_after(code: str) -> list[str]:
    probe = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])  # a printed list of names


def test_import_and_check_stay_light():
    assert loaded_after("import dnnspec; dnnspec.compile, dnnspec.load, dnnspec.load_data") == []
    assert loaded_after("from dnnspec.cli import main; main(['check', 'specs/fashion_mlp.dnn'])") == []


def test_the_names_are_the_modules_functions():
    from dnnspec import api
    from dnnspec.data import load_data
    from dnnspec.evaluation import evaluate
    from dnnspec.export.predictor import Predictor

    assert (dnnspec.compile, dnnspec.load, dnnspec.load_data, dnnspec.evaluate, dnnspec.Predictor) == (
        api.compile, api.load, load_data, evaluate, Predictor)
    assert set(dnnspec.__all__) == {"Predictor", "compile", "evaluate", "export", "load", "load_data"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dnnspec.nothing  # noqa: B018


def small_net():
    m = ir.model_from_layers((3,), [("dense", {"units": 5}), ("relu", {}), ("dense", {"units": 2}),
                                    ("softmax", {})], train={"epochs": 2, "batch": 16, "seed": 0})
    return dnnspec.compile(m)


def test_export_is_a_function_and_still_the_package(tmp_path):
    import dnnspec.export.onnx_export as onnx_export  # importing a submodule keeps dnnspec.export callable

    net = small_net()
    path = dnnspec.export(net, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and callable(dnnspec.export)
    assert dnnspec.export.onnx_export is onnx_export
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_allclose(dnnspec.Predictor(path).predict(x), net.forward(x), atol=1e-6)
    with pytest.raises(TypeError, match="give the .onnx path"):
        dnnspec.export(net)


def test_export_a_run_folder_as_the_export_command_does(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    net = small_net()
    net.fit(x, y, run_dir=tmp_path / "run", progress=False)
    path = dnnspec.export(tmp_path / "run")
    assert path == tmp_path / "run" / "model.onnx"
    p = dnnspec.Predictor(path)
    assert p.metadata["weights"] == "best" and int(p.metadata["epochs"]) == 2
    report = dnnspec.evaluate(path, (x, y))
    assert report["accuracy"] == dnnspec.evaluate(tmp_path / "run", (x, y))["accuracy"]


def test_python_api_doc_covers_what_readme_and_the_api_name():
    doc = (ROOT / "docs" / "python-api.md").read_text()
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "examples").glob("*.py"))]
    named = {n for t in texts for n in re.findall(r"\bdnnspec\.([A-Za-z_]\w*)", t)} | set(dnnspec.__all__)
    named -= {"lark", "dnn"}  # file names (grammar/dnnspec.lark), not API
    missing = sorted(n for n in named if f"dnnspec.{n}" not in doc)
    assert missing == []
