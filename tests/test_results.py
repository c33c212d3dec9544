"""Short versions of the README's result runs: each spec must clearly learn on real data.

The full runs (all 60,000 images, every epoch) are in README's results table; these use
a subset and a few epochs so that CI stays fast, with thresholds far above chance.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnspec
from dnnspec.cli import main
from dnnspec.data import load_data

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")


def _final_row(run: Path) -> dict[str, str]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))[-1]


def test_spirals_cli_reaches_097(tmp_path, capsys):
    assert main(["train", str(ROOT / "specs/spirals.dnn"), "--out", str(tmp_path / "run"),
                 "--progress", "none"]) == 0
    out = capsys.readouterr().out
    net = dnnspec.load(tmp_path / "run" / "best.npz")
    data = load_data("spirals", net.model)
    acc = net.evaluate(data.x_test, data.y_test)["accuracy"]
    assert acc > 0.97, out
    assert "test accuracy" in out


def _train_subset(spec: str, run: Path, limit: int, epochs: int, n_test: int) -> float:
    """Train ``spec`` on the first ``limit`` training images; test accuracy on the first ``n_test``."""
    assert main(["train", str(ROOT / "specs" / spec), "--out", str(run), "--limit", str(limit),
                 "--epochs", str(epochs), "--progress", "none"]) == 0
    net = dnnspec.load(run / "best.npz")
    data = load_data("fashion-mnist", net.model)
    return net.evaluate(data.x_test[:n_test], data.y_test[:n_test])["accuracy"]


@needs_fashion
@pytest.mark.slow
def test_fashion_mlp_subset_learns(tmp_path):
    acc = _train_subset("fashion_mlp.dnn", tmp_path / "mlp", limit=6000, epochs=3, n_test=3000)
    assert acc > 0.78                       # chance is 0.10
    assert float(_final_row(tmp_path / "mlp")["val_accuracy"]) > 0.75


@needs_fashion
@pytest.mark.slow
def test_fashion_cnn_subset_learns_with_augmentation(tmp_path):
    acc = _train_subset("fashion_cnn.dnn", tmp_path / "cnn", limit=5000, epochs=3, n_test=2000)
    assert acc > 0.70                       # chance is 0.10


def test_quickstart_example_trains_and_matches_onnx(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import quickstart
    finally:
        sys.path.pop(0)
    result = quickstart.main(["--out", str(tmp_path)])
    assert result["accuracy"] > 0.97
    assert result["max_gap"] < 1e-5
    assert abs(result["onnx_accuracy"] - result["accuracy"]) < 1e-3


@needs_fashion
@pytest.mark.slow
def test_batchnorm_cures_vanishing_gradients_in_deep_sigmoid_net():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import vanishing_gradients
    finally:
        sys.path.pop(0)
    r = vanishing_gradients.main(["--limit", "10000", "--epochs", "1"])
    plain, bn = r["plain"], r["batchnorm"]
    # Without batch norm the first layer's gradient is far smaller than the last one's ...
    assert plain["first"] / plain["last"] < 1e-3
    assert bn["first"] / bn["last"] > 100 * (plain["first"] / plain["last"])
    # ... and the plain 20-layer sigmoid net stays near chance while the BN one learns.
    assert bn["accuracy"] > 0.6
    assert bn["accuracy"] > plain["accuracy"] + 0.3
    assert np.isfinite(plain["accuracy"])
