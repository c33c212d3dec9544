"""A CSV table with a text label in its first column and two text columns, end to end: train, export,
predict and serve on the raw table, evaluate equal to scikit-learn's metrics on onnxruntime's outputs."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dnnspec.cli import main

sk = pytest.importorskip("sklearn.metrics")
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("grade", "size", "colour", "weight", "shape")
SPEC = """network tab
data "{csv}" label=grade
input [7]
classes 3
normalize auto
layers {{
  dense 32
  relu
  dense 3
  softmax
}}
optimizer adam lr=0.01
train epochs=25 batch=32 validation=0.1 seed=0
"""


def write_csv(path: Path, n: int, seed: int) -> Path:
    """grade (low/mid/high) from two numbers and two text columns (colour: 3 values, shape: 2)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n)
    shape = rng.choice(["round", "square"], n)
    size, weight = rng.normal(size=n), rng.normal(size=n)
    score = size + 1.5 * (colour == "red") - 1.0 * (shape == "square") + 0.3 * weight
    grade = np.where(score > 0.8, "high", np.where(score > -0.5, "mid", "low"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(zip(grade, np.round(size, 4), colour, np.round(weight, 4), shape))
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_feeds(rows: list[dict]) -> dict[str, np.ndarray]:
    """The exported model's inputs built straight from the CSV with the csv module (the independent path)."""
    def col(name, kind):
        return np.array([[r[name] if kind is object else float(r[name])] for r in rows], dtype=kind)

    return {"size": col("size", np.float32), "colour": col("colour", object), "weight": col("weight", np.float32),
            "shape": col("shape", object)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("table")
    train_csv = write_csv(d / "train.csv", 400, seed=0)
    spec = d / "tab.dnn"
    spec.write_text(SPEC.format(csv=train_csv))
    run = d / "run"
    assert main(["train", str(spec), "--out", str(run), "--progress", "none"]) == 0
    assert main(["export", str(run)]) == 0
    return d, run


def test_exported_model_takes_the_raw_columns(trained):
    import onnx

    d, run = trained
    proto = onnx.load(run / "model.onnx")
    assert [i.name for i in proto.graph.input] == ["size", "colour", "weight", "shape"]
    meta = {m.key: m.value for m in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["high", "low", "mid"]
    schema = json.loads(meta["data_schema"])
    assert schema["label"] == ["grade"] and schema["columns"][1] == {"name": "colour", "kind": "text",
                                                                    "categories": ["blue", "green", "red"]}
    from dnnspec.checkpoint import read_meta

    for name in ("checkpoint.npz", "best.npz"):  # the record, class names included, is kept beside the weights
        assert read_meta(run / name)["data_schema"] == schema


def test_predict_on_the_raw_table_drops_the_label_with_a_note(trained, capsys):
    import onnxruntime as ort

    d, run = trained
    test_csv = write_csv(d / "test.csv", 60, seed=1)
    rows = read_rows(test_csv)
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["probabilities"], raw_feeds(rows))[0]
    capsys.readouterr()
    assert main(["predict", str(run / "model.onnx"), str(test_csv), "--out", str(d / "p.npy")]) == 0
    assert f"note: {test_csv}: dropped column 1 (grade), the label column" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(d / "p.npy"), want, atol=1e-6)
    assert main(["predict", str(run / "model.onnx"), str(test_csv), "--limit", "2", "--top", "1"]) == 0
    names = ["high", "low", "mid"]
    assert capsys.readouterr().out.splitlines() == [f"{i}: {names[k]} {want[i, k]:.4f}"
                                                    for i, k in enumerate(want[:2].argmax(1))]


def test_evaluate_equals_sklearn_through_onnx_and_the_engine(trained, capsys):
    import onnxruntime as ort

    d, run = trained
    test_csv = write_csv(d / "eval.csv", 80, seed=2)
    rows = read_rows(test_csv)
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], raw_feeds(rows))[0].astype(np.float64)
    names = ["high", "low", "mid"]
    y = np.array([names.index(r["grade"]) for r in rows])
    pred = probs.argmax(1)
    reports = []
    for model in (run / "model.onnx", run):
        capsys.readouterr()
        assert main(["evaluate", str(model), str(test_csv), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    for r in reports:
        assert r["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
        assert r["loss"] == pytest.approx(sk.log_loss(y, probs / probs.sum(1, keepdims=True), labels=[0, 1, 2]),
                                          rel=1e-5)
        p, rc, f1, support = sk.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
        assert [c["name"] for c in r["per_class"]] == names
        assert [c["precision"] for c in r["per_class"]] == pytest.approx(list(p), abs=1e-9)
        assert [c["recall"] for c in r["per_class"]] == pytest.approx(list(rc), abs=1e-9)
        assert [c["f1"] for c in r["per_class"]] == pytest.approx(list(f1), abs=1e-9)
        assert [c["support"] for c in r["per_class"]] == list(support)
    assert reports[0]["accuracy"] > 0.8  # it learned something from the text columns too


def test_evaluate_with_an_unseen_category_and_columns_in_another_order(trained, capsys):
    d, run = trained
    shuffled = d / "shuffled.csv"
    shuffled.write_text("shape,weight,colour,grade,size\nround,0.1,purple,mid,0.2\nsquare,-1,red,low,-2\n")
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.onnx"), str(shuffled), "--json"]) == 0
    by_onnx = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), str(shuffled), "--json"]) == 0
    by_engine = json.loads(capsys.readouterr().out)
    assert by_onnx["loss"] == pytest.approx(by_engine["loss"], rel=1e-5)
    bad = d / "bad.csv"
    bad.write_text("grade,size,colour,weight,shape\nmid,0.1,red,,round\n")
    assert main(["evaluate", str(run / "model.onnx"), str(bad)]) == 1
    assert f"{bad}: row 2, column 4 (weight): missing value (empty)" in capsys.readouterr().err


@contextlib.contextmanager
def cli_server(model: Path):
    """``python -m dnnspec serve MODEL`` on 127.0.0.1, a free port; yields the port; stopped by its pid."""
    proc = subprocess.Popen([sys.executable, "-m", "dnnspec", "serve", str(model), "--port", "0",
                             "--batch-window-ms", "2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "on http://127.0.0.1:" in line, line
        yield int(line.split("127.0.0.1:")[1].split("/")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    import http.client

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)


def test_serve_answers_requests_with_the_raw_columns(trained):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    httpclient = pytest.importorskip("tritonclient.http")
    from dnnspec.export.predictor import Predictor

    d, run = trained
    rows = read_rows(write_csv(d / "serve.csv", 5, seed=3))
    rows[0]["colour"] = "purple"  # unseen: all-zero one-hot, as in training's encoding
    want = Predictor(run / "model.onnx").predict(np.array([[float(r["size"]), r["colour"], float(r["weight"]),
                                                            r["shape"]] for r in rows], dtype=object))
    feeds = raw_feeds(rows)
    with cli_server(run / "model.onnx") as port:
        body = {"inputs": [{"name": k, "shape": [len(rows), 1], "datatype": "BYTES" if v.dtype == object else "FP32",
                            "data": v.ravel().tolist()} for k, v in feeds.items()]}
        status, answer = post(port, "/v2/models/model/infer", body)
        assert status == 200, answer
        out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in answer["outputs"]}
        np.testing.assert_allclose(out["probabilities"], want, atol=1e-6)
        body["inputs"][1]["data"] = [1, 2, 3, 4, 5]
        status, answer = post(port, "/v2/models/model/infer", body)
        assert status == 400 and "'data' must hold strings for BYTES" in answer["error"]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")  # binary BYTES, as tritonclient sends them
        inputs = []
        for k, v in feeds.items():
            inp = httpclient.InferInput(k, list(v.shape), "BYTES" if v.dtype == object else "FP32")
            inp.set_data_from_numpy(v, binary_data=True)
            inputs.append(inp)
        result = client.infer("model", inputs)
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)
        client.close()


def test_quantize_and_triton_refuse_a_table_model_in_one_line(trained, capsys):
    d, run = trained
    for flags in (["--quantize", "int8"], ["--triton", str(d / "repo")]):
        assert main(["export", str(run), "-o", str(d / "q.onnx"), *flags]) == 2
        err = capsys.readouterr().err
        assert "a table model with text columns takes one input per column" in err and "Traceback" not in err
