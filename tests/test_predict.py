"""Predictor and ``dnnspec predict``: inputs in every format, outputs, and clear errors."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from dnnspec import cli, ir
from dnnspec.engine.net import Net
from dnnspec.errors import CheckpointError, DataError, UsageError
from dnnspec.export.onnx_export import export
from dnnspec.export.predictor import Predictor, load_inputs

pytest.importorskip("onnxruntime")
IMG = (1, 6, 5)


def _net(in_shape, layers, **kw):
    net = Net(ir.model_from_layers(in_shape, layers, **kw), seed=3)
    rng = np.random.default_rng(3)
    for k in net.trainable:  # not the fresh init
        net.params[k] += rng.normal(0, 0.1, net.params[k].shape).astype(np.float32)
    return net


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    net = _net(IMG, [("conv2d", {"filters": 2}), ("relu", {}), ("flatten", {}), ("dense", {"units": 4}),
                     ("softmax", {})], scale=1 / 255)
    return net, export(net, tmp_path_factory.mktemp("m") / "img.onnx")


@pytest.fixture(scope="module")
def vector_model(tmp_path_factory):
    net = _net((5,), [("dense", {"units": 3}), ("softmax", {})])
    return net, export(net, tmp_path_factory.mktemp("m") / "vec.onnx")


def test_predict_matches_engine_in_batches(image_model):
    net, path = image_model
    x = np.random.default_rng(0).integers(0, 256, (50, *IMG)).astype(np.uint8)
    p = Predictor(path, threads=1)
    assert p.input_shape == IMG and p.class_names == ["0", "1", "2", "3"]
    want = net.forward(x)
    np.testing.assert_allclose(p.predict(x), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p.predict(x, batch=7), want, atol=1e-5, rtol=0)
    idx, probs = p.top(x, k=2)
    np.testing.assert_array_equal(idx[:, 0], want.argmax(1))
    np.testing.assert_allclose(probs[:, 0], want.max(1), atol=1e-5)
    assert np.all(probs[:, 0] >= probs[:, 1])


def test_single_example_and_flat_rows(image_model):
    net, path = image_model
    p = Predictor(path)
    x = np.random.default_rng(1).uniform(0, 255, (3, *IMG)).astype(np.float32)
    want = net.forward(x)
    np.testing.assert_allclose(p.predict(x[0]), want[:1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(p.predict(x.reshape(3, -1)), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p.predict(x[:, 0]), want, atol=1e-5, rtol=0)


def test_binary_top_has_two_classes(tmp_path):
    net = _net((4,), [("dense", {"units": 1}), ("sigmoid", {})], loss="binary_cross_entropy")
    p = Predictor(export(net, tmp_path / "b.onnx"))
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    idx, probs = p.top(x, k=2)
    prob1 = net.forward(x)[:, 0]
    np.testing.assert_array_equal(idx[:, 0], (prob1 > 0.5).astype(int))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_wrong_inputs_name_the_expected_shape(image_model, vector_model):
    p = Predictor(image_model[1])
    with pytest.raises(DataError, match=r"shape \[4, 7, 7\] does not fit the model, which expects \[N, 1, 6, 5\]"):
        p.predict(np.zeros((4, 7, 7)))
    with pytest.raises(DataError, match="must be numbers, found dtype <U1"):
        p.predict(np.array([["a"] * 30]))
    with pytest.raises(DataError, match="NaN"):
        p.predict(np.full((1, *IMG), np.nan))
    v = Predictor(vector_model[1])
    with pytest.raises(DataError, match=r"6 features per row, but the model expects 5 \(input shape \[N, 5\]\)"):
        v.predict(np.zeros((2, 6)))


def test_corrupt_and_missing_model_files(tmp_path, vector_model):
    data = vector_model[1].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.onnx: not a valid ONNX model"):
        Predictor(bad)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(CheckpointError, match="not a valid ONNX model"):
        Predictor(junk)
    with pytest.raises(UsageError, match="no such model file"):
        Predictor(tmp_path / "nope.onnx")


def test_cuda_request_says_what_is_missing(vector_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(UsageError, match="needs onnxruntime-gpu, which is not installed"):
        Predictor(vector_model[1], provider="cuda")


def _write_idx(path, arr):
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_input_formats_give_the_same_predictions(tmp_path, image_model):
    from PIL import Image

    net, path = image_model
    x = np.random.default_rng(4).integers(0, 256, (3, *IMG)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=np.zeros(3))
    np.savetxt(tmp_path / "x.csv", x.reshape(3, -1), delimiter=",", fmt="%d",
               header=",".join(f"p{i}" for i in range(30)), comments="")
    _write_idx(tmp_path / "x-idx3-ubyte.gz", x[:, 0])
    Image.fromarray(x[0, 0]).save(tmp_path / "x.png")
    p = Predictor(path)
    want = net.forward(x)
    for name in ("x.npy", "x.npz", "x.csv", "x-idx3-ubyte.gz"):
        np.testing.assert_allclose(p.predict(load_inputs(tmp_path / name, IMG)), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p.predict(load_inputs(tmp_path / "x.png", IMG)), want[:1], atol=1e-5, rtol=0)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="image is 8x8 pixels but the model expects 5x6"):
        load_inputs(tmp_path / "big.png", IMG)
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(UsageError, match="unknown input format"):
        load_inputs(tmp_path / "x.txt", IMG)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3, column 2 \(b\): 'oops' is not a finite number"):
        load_inputs(tmp_path / "bad.csv", IMG)
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"has a header \(a, b\) but no rows below it"):
        load_inputs(tmp_path / "header_only.csv", IMG)


def test_cli_prints_and_writes(tmp_path, vector_model, capsys):
    net, path = vector_model
    x = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    want = net.forward(x)
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"0: {want[0].argmax()} ")
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]) == 0
    records = json.loads((tmp_path / "p.json").read_text())
    assert [r["top"][0]["class"] for r in records] == want.argmax(1).tolist()
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, atol=1e-5, rtol=0)
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--top", "1", "--batch", "3",
                     "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "row,class_1,name_1,probability_1" and len(rows) == 5
    assert [int(r.split(",")[1]) for r in rows[1:]] == want.argmax(1).tolist()


def test_cli_errors_are_one_line(tmp_path, vector_model, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 9), np.float32))
    assert cli.main(["predict", str(vector_model[1]), str(tmp_path / "bad.npy")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expects 5" in err
    assert cli.main(["predict", str(vector_model[1]), str(tmp_path / "bad.npy"),
                     "--out", str(tmp_path / "no" / "p.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_top_level_api_is_lazy():
    import subprocess
    import sys

    import dnnspec

    assert dnnspec.Predictor is Predictor
    code = "import sys, dnnspec; dnnspec.Predictor; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_predict_without_a_batch_runs_bounded_calls(vector_model, monkeypatch):
    """Without ``batch``: DEFAULT_BATCH rows per onnxruntime call (what it holds stays bounded), as the CLI."""
    from dnnspec.commands import predict as predict_cmd
    from dnnspec.export import predictor

    net, path = vector_model
    monkeypatch.setattr(predictor, "DEFAULT_BATCH", 16)
    p = Predictor(path, threads=1)
    calls = []
    run = p._run
    monkeypatch.setattr(p, "_run", lambda feeds, source: calls.append(len(next(iter(feeds.values()))))
                        or run(feeds, source))
    x = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    got = p.predict(x)
    assert calls == [16, 16, 8]
    np.testing.assert_array_equal(got, p.predict(x, batch=len(x)))  # the same rows in one call
    calls.clear()
    np.testing.assert_array_equal(p.predict(x, batch=0), got)  # 0: one call, as it always was
    assert calls == [40]
    import argparse

    parser = argparse.ArgumentParser()
    predict_cmd.add_arguments(parser)
    monkeypatch.undo()
    assert parser.parse_args(["m.onnx", "x.npy"]).batch == predictor.DEFAULT_BATCH
