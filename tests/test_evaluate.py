"""Evaluation: metrics against scikit-learn, the ONNX file and the engine agree, ``dnnspec evaluate``, run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.cli import main
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import DataError, UsageError
from dnnspec.evaluation import (
    Report,
    classification_metrics,
    evaluate,
    make_report,
    regression_metrics,
    render_report,
)

sk = pytest.importorskip("sklearn.metrics")
ROOT = Path(__file__).resolve().parents[1]


def random_probs(n, k, seed):
    """Softmax of random logits, with class k-1 never the most probable and never a label."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    z[:, k - 1] -= 6  # never predicted
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, k - 1, n)  # never a label either: both zero-division cases
    return p.astype(np.float32), y


# --- metrics against scikit-learn --------------------------------------------------------------


@pytest.mark.parametrize("n,k,seed", [(500, 4, 0), (1000, 10, 1), (37, 7, 2), (300, 2, 3)])
def test_classification_metrics_equal_sklearn(n, k, seed):
    p, y = random_probs(n, k, seed)
    m = classification_metrics(p, y, top_k=(2, 3, 5))
    labels = list(range(k))
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
    p64 = p.astype(np.float64)
    assert m["loss"] == pytest.approx(sk.log_loss(y, p64 / p64.sum(1, keepdims=True), labels=labels), rel=1e-6)
    for j in (2, 3, 5):
        if j < k:
            want = sk.top_k_accuracy_score(y, p, k=j, labels=labels)
            assert m["top_k_accuracy"][str(j)] == pytest.approx(want, abs=1e-12)
        else:
            assert str(j) not in m["top_k_accuracy"]  # k >= classes: always 1, not reported
    np.testing.assert_array_equal(m["confusion_matrix"], sk.confusion_matrix(y, pred, labels=labels))
    prec, rec, f1, sup = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for name, want in (("precision", prec), ("recall", rec), ("f1", f1), ("support", sup)):
        np.testing.assert_allclose(m["per_class"][name], want, atol=1e-12)
    for avg in ("macro", "weighted"):
        want = sk.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        got = m[f"{avg}_avg"]
        np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], want[:3], atol=1e-12)


def test_binary_sigmoid_column_is_two_classes():
    rng = np.random.default_rng(4)
    p1 = rng.uniform(size=(400, 1)).astype(np.float32)
    y = (rng.uniform(size=400) < p1[:, 0]).astype(np.int64)
    m = classification_metrics(p1, y)
    pred = (p1[:, 0] > 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["loss"] == pytest.approx(sk.log_loss(y, p1[:, 0].astype(np.float64)), rel=1e-6)
    np.testing.assert_array_equal(m["confusion_matrix"], sk.confusion_matrix(y, pred))
    assert m["per_class"]["f1"][1] == pytest.approx(sk.f1_score(y, pred))


def test_zero_probability_costs_a_bounded_loss():
    p = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    m = classification_metrics(p, np.array([1, 0]))
    assert m["loss"] == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)


@pytest.mark.parametrize("targets", [1, 3])
def test_regression_metrics_equal_sklearn(targets):
    rng = np.random.default_rng(targets)
    t = rng.normal(size=(200, targets))
    o = t + rng.normal(scale=0.3, size=t.shape)
    m = regression_metrics(o.astype(np.float32), t)
    o64 = o.astype(np.float32).astype(np.float64)
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(t, o64), rel=1e-9)
    assert m["mse"] == pytest.approx(sk.mean_squared_error(t, o64), rel=1e-9)
    assert m["rmse"] == pytest.approx(sk.root_mean_squared_error(t, o64), rel=1e-9)
    assert m["r2"] == pytest.approx(sk.r2_score(t, o64), rel=1e-9)
    assert m["loss"] == pytest.approx(np.mean((o64 - t) ** 2), rel=1e-9)  # the training loss, mse
    np.testing.assert_allclose(m["per_target"]["r2"], sk.r2_score(t, o64, multioutput="raw_values"), rtol=1e-9)


def test_r2_of_a_constant_target_follows_sklearn():
    t = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    for o in (t.copy(), t + [[0.5, 0.0]] * 3):  # exact (R2 1) and off (R2 0) on the constant column
        got = regression_metrics(o, t)["per_target"]["r2"]
        np.testing.assert_allclose(got, sk.r2_score(t, o, multioutput="raw_values"))


# --- a trained model, through the engine and through ONNX -----------------------------------------


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 2.0], [2.0, -1.5], [-2.0, -1.5], [0.0, -0.5]])
    y = rng.integers(0, 4, n)
    return (centers[y] + rng.normal(scale=0.9, size=(n, 2))).astype(np.float32), y


SPEC = """network four_blobs
input [2]
classes "north", "east", "west", "middle"
layers {
  dense 16
  tanh
  dense 4
  softmax
}
optimizer adam lr=0.03
train epochs=4 batch=32 validation=0.2 seed=2
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder trained by the CLI on a .npz with a test split, and its exported ONNX file."""
    d = tmp_path_factory.mktemp("ev")
    x, y = blobs(600, 0)
    xt, yt = blobs(300, 1)
    np.savez(d / "blobs.npz", x=x, y=y, x_test=xt, y_test=yt)
    (d / "four.dnn").write_text(SPEC)
    assert main(["train", str(d / "four.dnn"), "--data", str(d / "blobs.npz"), "--out", str(d / "run"),
                 "--progress", "none"]) == 0
    assert main(["export", str(d / "run")]) == 0
    return d, xt, yt


def test_onnx_file_and_engine_agree(trained):
    d, xt, yt = trained
    engine, onnx = evaluate(d / "run", (xt, yt)), evaluate(d / "run" / "model.onnx", (xt, yt))
    assert 0.5 < engine["accuracy"] < 1.0  # trained, and not so well that every number is 1
    np.testing.assert_array_equal(engine.confusion, onnx.confusion)
    a, b = engine.to_dict(), onnx.to_dict()
    assert a.pop("model") != b.pop("model")
    assert a["per_class"] == b["per_class"] and a["accuracy"] == b["accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["top_k_accuracy"] == b["top_k_accuracy"] and set(a["top_k_accuracy"]) == {"3"}
    # and both equal scikit-learn on the probabilities the ONNX file gives
    import dnnspec

    p = dnnspec.Predictor(d / "run" / "model.onnx").predict(xt)
    assert onnx["accuracy"] == sk.accuracy_score(yt, p.argmax(1))
    assert onnx["macro_avg"]["f1"] == pytest.approx(sk.f1_score(yt, p.argmax(1), average="macro"))


def test_train_writes_the_test_report_into_the_run_folder(trained):
    d, xt, yt = trained
    saved = json.loads((d / "run" / "metrics.json").read_text())
    again = evaluate(d / "run", (xt, yt)).to_dict()  # the run folder's best weights = what training ended with
    for key in ("loss", "accuracy", "per_class", "macro_avg", "weighted_avg", "confusion_matrix", "examples"):
        assert saved[key] == again[key]
    assert saved["data"] == "test split" and saved["confusion_matrix"]["labels"] == ["north", "east", "west", "middle"]
    assert (d / "run" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_tables_with_class_names(trained, capsys):
    d, _, yt = trained
    assert main(["evaluate", str(d / "run" / "model.onnx"), str(d / "blobs.npz")]) == 0
    out = capsys.readouterr().out
    assert f"on blobs (test split): {len(yt)} examples" in out
    table = out[out.index("class "):]
    for i, name in enumerate(["north", "east", "west", "middle"]):
        assert f"{i} {name}" in table
    assert "macro avg" in out and "weighted avg" in out and "confusion matrix (rows: true, columns: predicted)" in out
    rows = [ln.split() for ln in out[out.index("confusion matrix"):].splitlines()[2:6]]
    counts = np.array([[int(c) for c in r[2:]] for r in rows])
    assert counts.sum() == len(yt) and list(counts.sum(1)) == list(np.bincount(yt, minlength=4))


def test_cli_json_and_out_folder(trained, tmp_path, capsys):
    d, xt, yt = trained
    assert main(["evaluate", str(d / "run"), str(d / "blobs.npz"), "--json", "--out", str(tmp_path / "o"),
                 "--top-k", "2,3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == len(yt) and set(report["top_k_accuracy"]) == {"2", "3"}
    assert json.loads((tmp_path / "o" / "metrics.json").read_text()) == report
    assert (tmp_path / "o" / "confusion.png").stat().st_size > 1000
    assert report["accuracy"] == pytest.approx(np.trace(report["confusion_matrix"]["counts"]) / len(yt))


def test_cli_split_train_and_inputs_with_labels(trained, tmp_path, capsys):
    d, xt, yt = trained
    assert main(["evaluate", str(d / "run"), str(d / "blobs.npz"), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 600
    np.save(tmp_path / "x.npy", xt)
    np.savetxt(tmp_path / "y.csv", yt, fmt="%d")
    assert main(["evaluate", str(d / "run" / "model.onnx"), str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.csv"), "--json"]) == 0
    by_labels = json.loads(capsys.readouterr().out)
    assert by_labels["accuracy"] == evaluate(d / "run", (xt, yt))["accuracy"]


@pytest.mark.parametrize("argv,code,message", [
    (["{d}/nothing.onnx", "{d}/blobs.npz"], 2, "nothing.onnx: no such model file"),
    (["{d}/none", "{d}/blobs.npz"], 2, "none: no such model"),
    (["{d}/four.dnn", "{d}/blobs.npz"], 2, "four.dnn: not a model file"),
    (["{d}/run", "{d}/missing.npz"], 1, "missing.npz: data file not found"),
    (["{d}/run", "{d}/x.npy", "--labels", "{d}/bad_labels.npy"], 1, "label 7 at example 0 is not a class index 0..3"),
    (["{d}/run", "{d}/x.npy", "--labels", "{d}/short_labels.npy"], 1, "300 examples but 5 labels"),
    (["{d}/run", "{d}/notest.npz", "--split", "test"], 1, "notest.npz: has no test split"),
    (["{d}/run", "{d}/blobs.npz", "--top-k", "0"], 2, "expected whole numbers >= 1"),
])
def test_cli_errors_are_one_line(trained, capsys, argv, code, message):
    d, xt, yt = trained
    np.save(d / "x.npy", xt)
    np.save(d / "bad_labels.npy", np.full(len(xt), 7))
    np.save(d / "short_labels.npy", yt[:5])
    np.savez(d / "notest.npz", x=xt, y=yt)
    try:
        rc = main(["evaluate", *[a.format(d=d) for a in argv]])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err
    assert sum("error" in ln for ln in err.splitlines()) == 1  # one line (argparse's usage lines before it)


def test_csv_with_its_label_column_as_train_reads_it(trained, capsys):
    d, xt, yt = trained
    rows = "\n".join(f"{int(c)},{a:.9g},{b:.9g}" for c, (a, b) in zip(yt, xt))
    (d / "table.csv").write_text("label,x1,x2\n" + rows + "\n")
    assert main(["evaluate", str(d / "run" / "model.onnx"), f"{d / 'table.csv'}:label", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "table (all)" and report["examples"] == len(yt)
    assert report["accuracy"] == evaluate(d / "run", (xt, yt))["accuracy"]


def test_api_errors_name_the_problem(trained):
    d, xt, yt = trained
    with pytest.raises(DataError, match="4 examples but 3 labels"):
        evaluate(d / "run", (xt[:4], yt[:3]))
    with pytest.raises(DataError, match="label 2.5 at example 1"):
        evaluate(d / "run", (xt[:3], np.array([0, 2.5, 1])))
    with pytest.raises(UsageError, match="data must be a source"):
        evaluate(d / "run", xt)
    with pytest.raises(DataError, match="5 features per row, but the model expects 2"):
        evaluate(d / "run" / "model.onnx", (np.zeros((3, 5), np.float32), np.zeros(3)))


def test_default_data_is_the_specs_and_a_dataset_works(trained, tmp_path):
    from dnnspec.data import Dataset

    d, xt, yt = trained
    ds = Dataset(xt, yt, name="mine")
    r = evaluate(d / "run", ds)
    assert r.data == "mine (all)" and r.examples == len(xt)
    with pytest.raises(UsageError, match="its spec has no 'data' statement"):
        evaluate(d / "run")


# --- regression, both paths ------------------------------------------------------------------------


def test_regression_onnx_and_engine_agree_and_equal_sklearn(tmp_path):
    import dnnspec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    t = np.stack([x @ [1.0, -2.0, 0.5], np.sin(x[:, 0])], 1).astype(np.float32)
    m = ir.model_from_layers((3,), [("dense", {"units": 16}), ("tanh", {}), ("dense", {"units": 2})],
                             loss="mse", train={"epochs": 5, "batch": 32, "seed": 1})
    net = Net(m)
    fit(net, x, t, progress=False)
    path = dnnspec.export(net, tmp_path / "reg.onnx")
    a, b = evaluate(net, (x, t)), evaluate(path, (x, t))
    out = net.forward(x).astype(np.float64)
    for key, ref in (("mae", sk.mean_absolute_error), ("rmse", sk.root_mean_squared_error), ("r2", sk.r2_score)):
        assert a[key] == pytest.approx(ref(t, out), rel=1e-7)
        assert b[key] == pytest.approx(a[key], rel=1e-5)
    assert "R2" in a.render() and a.to_dict()["per_target"][1]["target"] == 1
    with pytest.raises(DataError, match="2 output"):
        evaluate(net, (x, t[:, :1].repeat(3, 1)))


# --- text ----------------------------------------------------------------------------------------------


def test_render_fits_narrow_widths_and_says_when_the_matrix_does_not():
    p, y = random_probs(2000, 12, 5)
    names = [f"class number {i} with a long name" for i in range(12)]
    r = make_report(p, y, "classification", names, model="m", data="d")
    wide = render_report(r, None)
    assert "confusion matrix (rows" in wide and "class number 3 with a lo~" not in wide
    assert "too wide to print here" in render_report(r, 40)
    narrow = render_report(r, 60)
    table = narrow[narrow.index("\nclass"):narrow.index("macro avg")]
    assert max(len(ln) for ln in table.splitlines()) <= 60
    for width in (52, 60, 100):
        text = render_report(r, width)
        matrix = text[text.index("confusion matrix (rows"):].splitlines()
        assert max(map(len, matrix)) <= width and matrix[-1].split()[0] == "11"  # names shortened to fit
    assert "11 class number 11 with~" in text  # at 100 columns: the first 24 characters


def test_report_is_a_plain_value():
    r = Report("classification", 3, {"loss": 0.1, "accuracy": 1.0})
    assert r["accuracy"] == 1.0 and r.summary() == {"loss": 0.1, "accuracy": 1.0}


# --- Fashion-MNIST: the spec's data statement, the test split ------------------------------------------


def test_fashion_mnist_test_split_through_the_spec(tmp_path):
    from dnnspec.data import fashion_mnist

    try:
        fashion_mnist()
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    spec = tmp_path / "f.dnn"
    spec.write_text("network f\ndata fashion-mnist\ninput image[1, 28, 28] scale=1/255\nclasses 10\n"
                    "layers {\n  flatten\n  dense 10\n  softmax\n}\ntrain epochs=1\n")
    net = dnnspec_compile(spec)
    net.save(tmp_path / "f.npz")
    r = subprocess.run([sys.executable, "-m", "dnnspec", "evaluate", str(tmp_path / "f.npz"), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["examples"] == 10_000 and report["data"] == "fashion-mnist (test split)"
    assert [c["support"] for c in report["per_class"]] == [1000] * 10


def dnnspec_compile(path):
    import dnnspec

    return dnnspec.compile(path)


def test_evaluation_passes_keep_a_conv_nets_scratch_within_budget():
    """The report's passes: the widest layer's rule (256..16384 rows) and every layer's forward scratch within
    memory.EVAL_SCRATCH (a conv net's im2col and padded copies are many times its widest output)."""
    from dnnspec import frontend, memory
    from dnnspec.report import Scorer

    conv = frontend.parse("input image[3, 64, 64]\nclasses 4\nlayers {\n  conv2d 64 kernel=3 padding=same\n"
                          "  batchnorm\n  relu\n  conv2d 64 kernel=3 padding=same\n  relu\n  global_avgpool\n"
                          "  dense 4\n  softmax\n}\n")
    rows = Scorer("c", "classification", [], None, conv).batch()
    per_row = memory.BYTES * memory._forward_elements(conv)
    assert rows * per_row <= memory.EVAL_SCRATCH < (rows + 1) * per_row and rows < 256
    mlp = frontend.parse("input [784]\nclasses 10\nlayers {\n  dense 256\n  relu\n  dense 10\n  softmax\n}\n")
    assert Scorer("m", "classification", [], None, mlp).batch() == 16384  # an MLP's passes stay as large
