"""``dnnspec train``: run folder, resume, limits, overrides, clear errors (through cli.main)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnnspec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = """network tiny_blobs
input [2]
classes 3
layers {
  dense 16
  relu
  dense 3
  softmax
}
optimizer adam lr=0.02
train epochs=3 batch=32 validation=0.2 seed=1
"""


@pytest.fixture
def spec(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, 400)
    yt = rng.integers(0, 3, 100)
    np.savez(tmp_path / "blobs.npz", x=(centers[y] + rng.normal(size=(400, 2))).astype(np.float32), y=y,
             x_test=(centers[yt] + rng.normal(size=(100, 2))).astype(np.float32), y_test=yt)
    p = tmp_path / "tiny.dnn"
    p.write_text(SPEC)
    return p


def meta(path):
    return json.loads(np.load(path)["meta"].tobytes())


def test_train_writes_the_run_folder(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(out),
                 "--progress", "lines"]) == 0
    text = capsys.readouterr().out
    assert text.count("\nepoch ") == 3 and "test accuracy" in text
    assert {"checkpoint.npz", "best.npz", "history.csv", "spec.dnn"} <= {p.name for p in out.iterdir()}
    assert (out / "spec.dnn").read_text() == SPEC
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    acc = float(text.split("test accuracy ")[1].split()[0])
    assert acc > 0.85


def test_overrides_limit_and_resume(spec, tmp_path, capsys):
    out = tmp_path / "run"
    data = str(tmp_path / "blobs.npz")
    assert main(["train", str(spec), "--data", data, "--out", str(out), "--epochs", "2", "--batch", "16",
                 "--lr", "0.005", "--seed", "9", "--limit", "100", "--progress", "none"]) == 0
    m = meta(out / "checkpoint.npz")
    assert m["epoch"] == 2 and m["train"]["batch"] == 16 and m["rows"][0]["lr"] == 0.005
    assert int(np.load(out / "checkpoint.npz")["opt/t"]) == 2 * 5  # 100 rows, 80 train, batch 16
    assert main(["train", str(spec), "--data", data, "--out", str(out), "--epochs", "4", "--batch", "16",
                 "--lr", "0.005", "--limit", "100", "--resume", "--progress", "none"]) == 0
    assert meta(out / "checkpoint.npz")["epoch"] == 4
    capsys.readouterr()


def test_default_run_folder_is_runs_network_name(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec), "--data", "blobs.npz", "--epochs", "1", "--progress", "none"]) == 0
    assert (tmp_path / "runs" / "tiny_blobs" / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv,code,message", [
    (["--epochs", "0"], 2, "--epochs must be at least 1"),
    (["--lr", "-1"], 2, "--lr must be positive"),
    (["--resume"], 1, "no checkpoint to resume"),
])
def test_bad_arguments_are_one_line_errors(spec, tmp_path, capsys, argv, code, message):
    rc = main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err


def test_missing_spec_and_data(tmp_path, spec, capsys):
    assert main(["train", str(tmp_path / "none.dnn")]) == 2
    assert "none.dnn" in capsys.readouterr().err
    assert main(["train", str(spec), "--data", str(tmp_path / "nothing.npz")]) == 1
    assert "nothing.npz" in capsys.readouterr().err


def test_module_entry_point_runs(spec, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dnnspec", "train", str(spec), "--data", str(tmp_path / "blobs.npz"),
                        "--out", str(tmp_path / "r"), "--epochs", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout and "\r" not in r.stdout  # a pipe is not a terminal: plain lines
