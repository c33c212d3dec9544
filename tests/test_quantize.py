"""int8 quantization: static QDQ (calibrated) and dynamic, through the API and `dnnspec export --quantize`.

The reference for every check is the float32 export of the same weights run in
onnxruntime (itself tested against the engine in test_export.py).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from dnnspec import cli
from dnnspec.errors import UsageError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from dnnspec.export.onnx_export import DEFAULT_OPSET, to_onnx  # noqa: E402
from dnnspec.export.quantize import (  # noqa: E402
    QDQ_MAX_OPSET,
    alternating_rounds,
    calibration_sample,
    quantize_int8,
    quantize_static_int8,
)

CLASSES = 3
SIDE = 8
SPEC = f"""network tiny_cnn
data      "DATA"
input     image[1, {SIDE}, {SIDE}] scale=1/255
normalize auto
classes   {CLASSES}
layers {{
  conv2d 8 kernel=3 padding=same
  batchnorm
  relu
  maxpool 2
  conv2d 16 kernel=3 padding=same
  relu
  flatten
  dense 16
  relu
  dense {CLASSES}
  softmax
}}
loss      cross_entropy
optimizer sgd lr=0.05
train     epochs=1 batch=32 seed=3
"""


def images(rng, n):
    """``n`` raw 0..255 images ``(n, 1, SIDE, SIDE)`` float32 and labels: class c brightens pattern c by 50.

    The noise (uniform 0..205) is strong enough that the trained net is unsure about some
    examples (80 % test accuracy, 7 % of the top-two margins below 0.05), so that class
    agreement is a real test of the quantized model.
    """
    patterns = np.random.default_rng(99).random((CLASSES, 1, SIDE, SIDE)) > 0.5  # fixed for every call
    y = rng.integers(0, CLASSES, n)
    x = 50 * patterns[y] + rng.uniform(0, 205, (n, 1, SIDE, SIDE))
    return x.astype(np.float32), y


def trained_run(tmp_path, steps=60, data=True):
    """A run folder of the tiny CNN trained ``steps`` SGD steps, its data file next to the spec; returns the folder."""
    import dnnspec

    rng = np.random.default_rng(0)
    x, y = images(rng, 600)
    xt, yt = images(rng, 400)
    np.savez(tmp_path / "data.npz", x=x, y=y, x_test=xt, y_test=yt)
    text = SPEC.replace("DATA", str(tmp_path / "data.npz"))
    if not data:
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("data "))
    spec = tmp_path / "tiny.dnn"
    spec.write_text(text)
    net = dnnspec.compile(spec, seed=0)
    net.set_input_stats(x)
    for _ in range(steps):
        idx = rng.choice(len(x), 32, replace=False)
        _, grads = net.loss_and_grads(x[idx], y[idx], rng=rng)
        for k, g in grads.items():
            net.params[k] -= 0.05 * g
    run = tmp_path / "run"
    run.mkdir()
    net.save(run / "model.npz")
    return run, net, (x, y, xt, yt)


def float_bytes(net, opset=QDQ_MAX_OPSET):
    return to_onnx(net.model, net.params, opset=opset).SerializeToString()


def run_bytes(model: bytes, x: np.ndarray, level=None) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if level is not None:
        opts.graph_optimization_level = level
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def ops(model: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_model_from_string(model).graph.node)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(run folder, net, data, float32 bytes at opset 27, static int8 bytes calibrated on 256 examples)."""
    run, net, data = trained_run(tmp_path_factory.mktemp("tiny"))
    f = float_bytes(net)
    q = quantize_static_int8(f, calibration_sample(data[0], 256, seed=3))
    return run, net, data, f, q


# --- static QDQ -------------------------------------------------------------------------------------


def test_static_int8_puts_qdq_around_conv_and_gemm(tiny):
    """Each Conv and Gemm reads its input and its weights through DequantizeLinear; the checker passes."""
    _, _, _, _, q = tiny
    proto = onnx.load_model_from_string(q)
    onnx.checker.check_model(proto, full_check=True)
    producer = {out: n for n in proto.graph.node for out in n.output}
    linear = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.op_type for n in linear] == ["Conv", "Conv", "Gemm", "Gemm"]
    for n in linear:
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), n.name
        dq_weight = producer[n.input[1]]
        w_q = next(t for t in proto.graph.initializer if t.name == dq_weight.input[0])
        assert w_q.data_type == onnx.TensorProto.INT8  # weights stored as int8, not float32 beside a QDQ pair
    # the input's scale/normalisation and the softmax stay float32 (see quantize.py)
    assert ops(q)["Softmax"] == 1 and producer[proto.graph.output[0].name].op_type == "Softmax"


def test_static_int8_runs_convolutions_in_int8(tiny, tmp_path):
    """onnxruntime fuses DQ -> Conv -> Q into QLinearConv (and Gemm into QGemm) when it loads the model."""
    q = tiny[4]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware-specific layouts
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(q, opts, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert fused["QLinearConv"] == 2 and fused["Conv"] == 0, fused
    assert fused["QGemm"] == 2 and fused["Gemm"] == 0, fused


def test_static_int8_agrees_with_float32(tiny):
    """Class agreement >= 97 % on held-out data; probabilities within 0.01 on average, 0.05 at most.

    Why these bounds: an 8-bit activation is off by at most s/2 = range/510 (0.2 % of its
    calibrated range) and an int8 weight by max|W_c|/254; through the 4 quantized layers
    the probabilities move by about 0.002 on average here (0.015 at most), so only
    near-ties can change class. 7 % of these test examples have a top-two margin below
    0.05, and 99.5 % of the classes agreed; on Fashion-MNIST's 10,000 test images 99.3 %
    did (docs/export.md). Calibrating on wrongly scaled inputs gives 70 % agreement and
    0.17 mean error, far outside both bounds.
    """
    _, _, (_, _, xt, yt), f, q = tiny
    pf, pq = run_bytes(f, xt), run_bytes(q, xt)
    assert np.mean(pf.argmax(1) == yt) > 0.7  # the float model has learnt something
    agree = np.mean(pf.argmax(1) == pq.argmax(1))
    assert agree >= 0.97, agree
    err = np.abs(pf - pq)
    assert err.mean() < 0.01 and err.max() < 0.05, (err.mean(), err.max())
    np.testing.assert_allclose(pq.sum(1), 1, atol=1e-5)  # the softmax runs in float32


def test_static_int8_error_shrinks_with_calibration_on_real_inputs(tiny):
    """Calibrating on the data's range beats calibrating on inputs from the wrong range (a scale bug would not)."""
    _, _, (x, _, xt, _), f, q = tiny
    q_bad = quantize_static_int8(f, x[:256] / 255)  # as if the input were already scaled: ranges 255x too small
    pf = run_bytes(f, xt)
    good, bad = np.abs(run_bytes(q, xt) - pf).mean(), np.abs(run_bytes(q_bad, xt) - pf).mean()
    assert good * 3 < bad, (good, bad)


# --- calibration sample ----------------------------------------------------------------------------


def test_calibration_sample_is_seeded_and_reproducible(tiny):
    _, net, (x, *_), f, _ = tiny
    a, b, c = (calibration_sample(x, 100, seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (100, *x.shape[1:])
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in a) and len({r.tobytes() for r in a}) == 100  # drawn without replacement
    np.testing.assert_array_equal(calibration_sample(x, 10**6, 0), x)  # more than there are: all, in order
    q1, q2 = (quantize_static_int8(f, s) for s in (a, b))
    assert q1 == q2  # same sample, same bytes
    assert quantize_static_int8(f, c) != q1  # another sample, other scales


@pytest.mark.parametrize("n", [0, -5])
def test_calibration_size_must_be_positive(n):
    with pytest.raises(UsageError, match=f"--calibration {n}: give the number"):
        calibration_sample(np.zeros((4, 3), np.float32), n, 0)


def test_static_int8_refuses_opset_28():
    """onnxruntime 1.32 cannot load QuantizeLinear-28; the error says which opset to use instead."""
    from dnnspec import ir
    from dnnspec.engine.net import Net

    net = Net(ir.model_from_layers((3,), [("dense", {"units": 2}), ("softmax", {})]), seed=0)
    with pytest.raises(UsageError, match="needs --opset 27 or lower"):
        quantize_static_int8(float_bytes(net, opset=28), np.zeros((4, 3), np.float32))


# --- dynamic ----------------------------------------------------------------------------------------


def test_dynamic_int8_quantizes_dense_layers_and_leaves_convolutions_float(tiny):
    """ConvInteger was 5-6x slower than float Conv in onnxruntime 1.32, so dynamic int8 keeps Conv float32."""
    _, _, (_, _, xt, _), f, _ = tiny
    d = quantize_int8(f)
    found = ops(d)
    assert found["Conv"] == 2 and found["ConvInteger"] == 0, found
    assert found["MatMulInteger"] == 2, found
    onnx.checker.check_model(onnx.load_model_from_string(d), full_check=True)
    assert np.mean(run_bytes(d, xt).argmax(1) == run_bytes(f, xt).argmax(1)) >= 0.97


# --- timing -----------------------------------------------------------------------------------------


def test_alternating_rounds_alternate_and_respect_the_budget():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    t = alternating_rounds(fns, rounds=3, calls=2, warmup=1)
    assert order == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3
    assert [len(v) for v in t.values()] == [3, 3]
    assert len(alternating_rounds(fns, rounds=50, calls=1, budget_s=0.0)["a"]) == 1  # one round at least


# --- dnnspec export --quantize ----------------------------------------------------------------------


def test_export_int8_static_reports_calibration_accuracy_and_latency(tiny, tmp_path, capsys):
    run, *_ = tiny
    out = tmp_path / "q.onnx"
    assert cli.main(["export", str(run), "-o", str(out), "--quantize", "int8-static", "--calibration", "128"]) == 0
    text = capsys.readouterr().out
    assert "calibrating on 128 of 600 training examples, seed 3, from" in text
    assert "int8-static (" in text and "test accuracy " in text and "400 examples" in text
    assert "latency at batch 1: float32 " in text and "latency at batch 1024: float32 " in text
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == QDQ_MAX_OPSET and f"opset {QDQ_MAX_OPSET}, " in text
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["quantization"].startswith("int8 static (QDQ, MinMax calibration on 128 of 600 training examples")
    assert meta["model_name"] == "tiny_cnn"  # the export's own metadata survives quantization
    assert collections.Counter(n.op_type for n in proto.graph.node)["QuantizeLinear"] >= 4
    # the CLI picks the same seeded sample as the API: same file
    x = np.load(run.parent / "data.npz")["x"]
    f = onnx.load_model_from_string(quantize_static_int8(float_bytes(tiny[1]), calibration_sample(x, 128, 3)))
    assert [t.raw_data for t in f.graph.initializer] == [t.raw_data for t in proto.graph.initializer]


def test_export_int8_static_with_no_fold_says_to_fold(tiny, tmp_path, capsys):
    run, *_ = tiny
    args = ["export", str(run), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8-static", "--no-fold"]
    assert cli.main(args) == 0
    assert "note: --no-fold keeps each batch norm a float32 BatchNormalization" in capsys.readouterr().out
    assert cli.main(args[:-1]) == 0  # folded: no note
    assert "note: --no-fold" not in capsys.readouterr().out


def test_export_int8_dynamic_notes_its_mode(tiny, tmp_path, capsys):
    run, *_ = tiny
    out = tmp_path / "d.onnx"
    assert cli.main(["export", str(run), "-o", str(out), "--quantize", "int8"]) == 0
    text = capsys.readouterr().out
    assert "calibrating" not in text and "test accuracy " in text and "latency at batch 1: " in text
    proto = onnx.load(str(out))
    assert {p.key: p.value for p in proto.metadata_props}["quantization"].startswith("int8 dynamic")
    assert proto.opset_import[0].version == DEFAULT_OPSET  # dynamic int8 keeps the default opset


def test_export_int8_static_takes_the_whole_split_when_asked_for_more(tiny, tmp_path, capsys):
    run, *_ = tiny
    args = ["export", str(run), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8-static", "--calibration", "5000"]
    assert cli.main(args) == 0
    assert "calibrating on 600 of 600 training examples (the whole training split)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int8", "--calibration", "64"], "--calibration 64 applies to --quantize int8-static only"),
    (["--calibration", "64"], "--calibration 64 applies to --quantize int8-static only"),
    (["--quantize", "int8-static", "--calibration", "0"], "--calibration 0: give the number of training examples"),
    (["--quantize", "int8-static", "--opset", "28"], "--quantize int8-static needs --opset 27 or lower"),
])
def test_export_quantize_usage_errors_are_one_line(tiny, tmp_path, capsys, extra, message):
    run, *_ = tiny
    out = tmp_path / "q.onnx"
    assert cli.main(["export", str(run), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_export_int8_static_without_data_source_is_one_line(tmp_path, capsys):
    run, *_ = trained_run(tmp_path, steps=1, data=False)
    out = tmp_path / "q.onnx"
    assert cli.main(["export", str(run), "-o", str(out), "--quantize", "int8-static"]) == 2
    err = capsys.readouterr().err
    assert "calibrates on training data, but the spec names no data source; pass --data SOURCE" in err
    assert "tiny.dnn" in err and err.count("\n") == 1, err
    assert not out.exists()
    # --data supplies it
    args = ["export", str(run), "-o", str(out), "--quantize", "int8-static", "--data", str(tmp_path / "data.npz")]
    assert cli.main(args) == 0 and out.exists()


def test_export_int8_static_with_missing_data_file_is_one_line(tiny, tmp_path, capsys):
    run, *_ = tiny
    args = ["export", str(run), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8-static",
            "--data", str(tmp_path / "gone.npz")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "int8-static cannot load its calibration data" in err and "gone.npz" in err and err.count("\n") == 1, err
