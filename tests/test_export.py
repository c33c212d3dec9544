"""ONNX export: onnxruntime against the engine's net.forward, graph minimality, errors.

Every case trains a few SGD steps (so weights are not the fresh init), then gives the
batch-norm running statistics and learned alphas non-trivial values, and compares
onnxruntime's output with ``net.forward(x, training=False)`` at batch 1, 7 and 256,
with batch norm folded and unfolded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.engine.net import Net
from dnnspec.errors import CheckpointError, UsageError
from dnnspec.export.onnx_export import DEFAULT_OPSET, export, to_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOL = 1e-5
BATCHES = (1, 7, 256)


def make_net(in_shape, layers, *, loss="cross_entropy", scale=1.0, normalize=None, seed=0):
    """A Net trained 3 SGD steps on random data, with random bn statistics and alphas."""
    model = ir.model_from_layers(in_shape, layers, loss=loss, scale=scale)
    if normalize is not None:
        model = dataclasses.replace(model, normalize=normalize)
    return trained_net(model, seed)


def trained_net(model, seed=0, n=32):
    """A Net of ``model`` after 3 SGD steps on random data, with random bn statistics and alphas."""
    net = Net(model, seed=seed)
    loss = model.loss.kind
    rng = np.random.default_rng(seed)
    x = raw_inputs(rng, model, n)
    if model.normalize.mode == "auto":
        net.set_input_stats(x)
    out = model.output_shape[0]
    if loss == "mse":
        y = rng.normal(size=(n, out))
    else:
        y = rng.integers(0, 2 if loss == "binary_cross_entropy" else model.task.classes, n)
    for _ in range(3):
        _, grads = net.loss_and_grads(x, y, rng=rng)
        for k, g in grads.items():
            net.params[k] -= 0.05 * g
    for spec in model.params:
        p = net.params[spec.name]
        if spec.name.endswith("running_mean"):
            p[...] = rng.normal(0, 0.5, p.shape)
        elif spec.name.endswith("running_var"):
            p[...] = rng.uniform(0.5, 2.0, p.shape)
        elif spec.name.endswith((".gamma", ".beta")):
            p += rng.normal(0, 0.2, p.shape).astype(p.dtype)
        elif spec.name.endswith(".alpha"):
            p[...] = rng.uniform(0.05, 0.6, p.shape)
    return net


def raw_inputs(rng, model, n):
    """Raw inputs in the units the spec expects: 0..255 when it scales by 1/255."""
    shape = (n, *model.input.shape)
    if model.input.scale != 1.0:
        return rng.uniform(0, 255, shape).astype(np.float32)
    return (rng.normal(0.3, 1.5, shape)).astype(np.float32)


def session(proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def assert_parity(net, proto, seed=1):
    sess = session(proto)
    rng = np.random.default_rng(seed)
    for n in BATCHES:
        x = raw_inputs(rng, net.model, n)
        got = sess.run(None, {"input": x})[0]
        want = net.forward(x, training=False)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"batch {n}")


def ops(proto):
    return [n.op_type for n in proto.graph.node]


D = ("dense", {"units": 8})
SOFTMAX_HEAD = [("dense", {"units": 4}), ("softmax", {})]
IMG = (2, 9, 9)

# id -> (input shape, layers, make_net options, ONNX ops expected with folding on)
CASES = {
    "relu": ((12,), [D, ("relu", {}), *SOFTMAX_HEAD], {}, "Gemm Relu Gemm Softmax"),
    "leaky_relu": ((12,), [D, ("leaky_relu", {"alpha": 0.2}), *SOFTMAX_HEAD], {}, "Gemm LeakyRelu Gemm Softmax"),
    "elu": ((12,), [D, ("elu", {"alpha": 0.7}), *SOFTMAX_HEAD], {}, "Gemm Elu Gemm Softmax"),
    "softplus": ((12,), [D, ("softplus", {}), *SOFTMAX_HEAD], {}, "Gemm Softplus Gemm Softmax"),
    "sigmoid": ((12,), [D, ("sigmoid", {}), *SOFTMAX_HEAD], {}, "Gemm Sigmoid Gemm Softmax"),
    "tanh": ((12,), [D, ("tanh", {}), *SOFTMAX_HEAD], {}, "Gemm Tanh Gemm Softmax"),
    "prelu_layer": ((12,), [D, ("leaky_relu", {"learn": True}), *SOFTMAX_HEAD], {}, "Gemm PRelu Gemm Softmax"),
    "prelu_channel": ((12,), [D, ("leaky_relu", {"learn": True, "per": "channel"}), *SOFTMAX_HEAD], {},
                      "Gemm PRelu Gemm Softmax"),
    "elu_learn_layer": ((12,), [D, ("elu", {"learn": True}), *SOFTMAX_HEAD], {}, "Gemm Elu Gemm Softmax"),
    "elu_learn_channel": ((12,), [D, ("elu", {"learn": True, "per": "channel"}), *SOFTMAX_HEAD], {},
                          "Gemm Elu PRelu Gemm Softmax"),
    "bn_after_dense": ((12,), [D, ("batchnorm", {}), ("relu", {}), *SOFTMAX_HEAD], {}, "Gemm Relu Gemm Softmax"),
    "bn_after_act": ((12,), [D, ("tanh", {}), ("batchnorm", {}), *SOFTMAX_HEAD], {}, "Gemm Tanh Gemm Softmax"),
    "bn_first": ((12,), [("batchnorm", {}), D, ("relu", {}), *SOFTMAX_HEAD], {}, "Gemm Relu Gemm Softmax"),
    "bn_last": ((12,), [D, ("sigmoid", {}), ("batchnorm", {})], {"loss": "mse"}, "Gemm Sigmoid Mul Add"),
    "dropout_inverted": ((12,), [D, ("relu", {}), ("dropout", {"rate": 0.4}), *SOFTMAX_HEAD], {},
                         "Gemm Relu Gemm Softmax"),
    "dropout_scale": ((12,), [D, ("relu", {}), ("dropout", {"rate": 0.4, "mode": "scale"}), *SOFTMAX_HEAD], {},
                      "Gemm Relu Gemm Softmax"),
    "dropout_scale_no_linear_after": ((12,), [("dense", {"units": 4}), ("dropout", {"rate": 0.5, "mode": "scale"}),
                                              ("softmax", {})], {}, "Gemm Mul Softmax"),
    "dropout_scale_bn": ((12,), [D, ("dropout", {"rate": 0.3, "mode": "scale"}), ("batchnorm", {}), ("elu", {}),
                                 *SOFTMAX_HEAD], {}, "Gemm Elu Gemm Softmax"),
    "scale": ((12,), [D, ("relu", {}), *SOFTMAX_HEAD], {"scale": 1 / 255}, "Gemm Relu Gemm Softmax"),
    "scale_before_act": ((12,), [("tanh", {}), D, ("relu", {}), *SOFTMAX_HEAD], {"scale": 1 / 255},
                         "Mul Tanh Gemm Relu Gemm Softmax"),
    "normalize_auto": ((12,), [D, ("relu", {}), *SOFTMAX_HEAD], {"normalize": ir.Normalize("auto")},
                       "Gemm Relu Gemm Softmax"),
    "normalize_values": ((12,), [D, ("relu", {}), *SOFTMAX_HEAD],
                         {"scale": 1 / 255, "normalize": ir.Normalize("values", (0.4,), (0.25,))},
                         "Gemm Relu Gemm Softmax"),
    "normalize_before_relu": ((12,), [("relu", {}), D, *SOFTMAX_HEAD], {"normalize": ir.Normalize("auto")},
                              "Mul Add Relu Gemm Gemm Softmax"),
    "regression": ((12,), [D, ("relu", {}), ("dense", {"units": 3})], {"loss": "mse"}, "Gemm Relu Gemm"),
    "binary": ((12,), [D, ("relu", {}), ("dense", {"units": 1}), ("sigmoid", {})],
               {"loss": "binary_cross_entropy"}, "Gemm Relu Gemm Sigmoid"),
    "no_bias": ((12,), [("dense", {"units": 8, "bias": False}), ("batchnorm", {}), ("relu", {}), *SOFTMAX_HEAD],
                {"normalize": ir.Normalize("auto")}, "Gemm Relu Gemm Softmax"),
    "cnn": (IMG, [("conv2d", {"filters": 4, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
                  ("maxpool", {"kernel": 2}), ("conv2d", {"filters": 5, "kernel": 2}), ("relu", {}),
                  ("avgpool", {"kernel": 3, "stride": 2, "padding": 1}), ("flatten", {}), *SOFTMAX_HEAD], {},
            "Conv Relu MaxPool Conv Relu AveragePool Flatten Gemm Softmax"),
    "cnn_normalized_valid": (IMG, [("conv2d", {"filters": 4}), ("relu", {}), ("global_avgpool", {}), *SOFTMAX_HEAD],
                             {"scale": 1 / 255, "normalize": ir.Normalize("auto")},
                             "Conv Relu GlobalAveragePool Flatten Gemm Softmax"),
    "cnn_normalized_same": (IMG, [("conv2d", {"filters": 4, "padding": "same", "stride": 2}), ("relu", {}),
                                  ("global_avgpool", {}), *SOFTMAX_HEAD],
                            {"scale": 1 / 255, "normalize": ir.Normalize("auto")},
                            "Mul Add Conv Relu GlobalAveragePool Flatten Gemm Softmax"),
    "cnn_scale_same": (IMG, [("conv2d", {"filters": 4, "padding": 1}), ("relu", {}), ("flatten", {}),
                             *SOFTMAX_HEAD], {"scale": 1 / 255}, "Conv Relu Flatten Gemm Softmax"),
    "cnn_bn_after_pool": (IMG, [("conv2d", {"filters": 3, "kernel": [3, 2], "stride": [1, 2]}), ("relu", {}),
                                ("maxpool", {"kernel": 2, "padding": 1}), ("batchnorm", {}), ("flatten", {}),
                                *SOFTMAX_HEAD], {}, "Conv Relu MaxPool Flatten Gemm Softmax"),
    "cnn_bn_before_padded_conv": (IMG, [("conv2d", {"filters": 3}), ("relu", {}), ("batchnorm", {}),
                                        ("conv2d", {"filters": 3, "padding": "same", "bias": False}),
                                        ("global_avgpool", {}), *SOFTMAX_HEAD], {},
                                  "Conv Relu Mul Add Conv GlobalAveragePool Flatten Gemm Softmax"),
    "cnn_dropout_scale": (IMG, [("conv2d", {"filters": 3}), ("relu", {}), ("dropout", {"rate": 0.5, "mode": "scale"}),
                                ("conv2d", {"filters": 3, "padding": "same"}), ("flatten", {}), *SOFTMAX_HEAD], {},
                          "Conv Relu Conv Flatten Gemm Softmax"),
    "cnn_prelu_channel": (IMG, [("conv2d", {"filters": 3}), ("leaky_relu", {"learn": True, "per": "channel"}),
                                ("flatten", {}), *SOFTMAX_HEAD], {}, "Conv PRelu Flatten Gemm Softmax"),
    "cnn_elu_channel": (IMG, [("conv2d", {"filters": 3}), ("elu", {"learn": True, "per": "channel"}),
                              ("avgpool", {"kernel": 2}), ("flatten", {}), *SOFTMAX_HEAD], {},
                        "Conv Elu PRelu AveragePool Flatten Gemm Softmax"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_and_minimal_graph(case):
    in_shape, layers, kw, expected = CASES[case]
    net = make_net(in_shape, layers, **kw)
    folded = to_onnx(net.model, net.params)
    assert_parity(net, folded)
    assert " ".join(ops(folded)) == expected
    if any(kind == "batchnorm" for kind, _ in layers):
        unfolded = to_onnx(net.model, net.params, fold=False)
        assert "BatchNormalization" in ops(unfolded)
        assert_parity(net, unfolded)


SPECS = sorted(Path(__file__).parent.parent.glob("specs/*.dnn"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_parity_for_every_spec(spec):
    from dnnspec import frontend

    net = trained_net(frontend.load(str(spec)), n=8)
    folded = to_onnx(net.model, net.params)
    assert not {"BatchNormalization", "Dropout"} & set(ops(folded))
    assert_parity(net, folded)
    if any(layer.kind == "batchnorm" for layer in net.model.layers):
        assert_parity(net, to_onnx(net.model, net.params, fold=False))


def test_matmul_form_matches_gemm_form():
    net = make_net((12,), [D, ("batchnorm", {}), ("relu", {}), *SOFTMAX_HEAD], normalize=ir.Normalize("auto"))
    proto = to_onnx(net.model, net.params, dense_op="matmul")
    assert ops(proto) == ["MatMul", "Add", "Relu", "MatMul", "Add", "Softmax"]
    assert_parity(net, proto)


def test_names_outputs_and_metadata(tmp_path):
    net = make_net((12,), [D, ("relu", {}), *SOFTMAX_HEAD])
    path = export(net, tmp_path / "m.onnx", logits_output=True, metadata={"epochs": 3, "val_accuracy": 0.5})
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [12]
    assert proto.opset_import[0].version == DEFAULT_OPSET
    names = {i.name for i in proto.graph.initializer}
    assert {"dense1.kernel", "dense1.bias", "dense2.kernel", "dense2.bias"} == names
    assert [n.name for n in proto.graph.node] == ["dense1/Gemm", "relu1/Relu", "dense2/Gemm", "softmax1/Softmax"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["0", "1", "2", "3"]
    assert meta["input_layout"] == "NF" and json.loads(meta["input_shape"]) == [12]
    assert meta["epochs"] == "3" and json.loads(meta["val_accuracy"]) == 0.5
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    probs, logits = session(proto).run(None, {"input": x})
    np.testing.assert_allclose(logits, net.logits(x), atol=TOL, rtol=0)
    np.testing.assert_allclose(probs, net.forward(x), atol=TOL, rtol=0)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file is left behind"


def test_regression_output_name_and_logits_refused():
    net = make_net((12,), [D, ("dense", {"units": 2})], loss="mse")
    assert [o.name for o in to_onnx(net.model, net.params).graph.output] == ["output"]
    with pytest.raises(UsageError, match="--logits needs a model whose last layer is softmax or sigmoid.* in dense"):
        to_onnx(net.model, net.params, logits_output=True)


def test_opset_range():
    net = make_net((12,), [D, ("elu", {}), *SOFTMAX_HEAD])
    proto = to_onnx(net.model, net.params, opset=17)
    assert proto.opset_import[0].version == 17
    assert_parity(net, proto)
    with pytest.raises(UsageError, match="--opset 9 is not supported"):
        to_onnx(net.model, net.params, opset=9)


def test_checkpoint_not_matching_spec():
    net = make_net((12,), [D, ("relu", {}), *SOFTMAX_HEAD])
    params = dict(net.params)
    params["dense2.kernel"] = np.zeros((8, 5), np.float32)
    with pytest.raises(CheckpointError, match=r"dense2.kernel has shape \[8, 5\] but the spec .* expects \[8, 4\]"):
        to_onnx(net.model, params)
    del params["dense2.kernel"]
    with pytest.raises(CheckpointError, match=r"dense2.kernel is missing .* expects shape \[8, 4\]"):
        to_onnx(net.model, params)
    params["dense2.kernel"] = np.full((8, 4), np.nan, np.float32)
    with pytest.raises(CheckpointError, match="NaN"):
        to_onnx(net.model, params)


def test_output_path_errors(tmp_path):
    net = make_net((12,), [D, *SOFTMAX_HEAD])
    with pytest.raises(UsageError, match="folder .*missing does not exist"):
        export(net, tmp_path / "missing" / "m.onnx")
    with pytest.raises(UsageError, match="is a folder"):
        export(net, tmp_path)


def test_output_path_without_write_permission(tmp_path):
    net = make_net((12,), [D, *SOFTMAX_HEAD])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "m.onnx"
    try:
        target.write_bytes(b"")
        writable = True  # root ignores permission bits; fall back to sysfs, read-only for everyone
        target.unlink()
        target = "/sys/m.onnx"
    except PermissionError:
        writable = False
    if writable:
        try:
            open(target, "wb").close()
            pytest.skip("no unwritable folder on this machine")
        except OSError:
            pass
    with pytest.raises(UsageError, match="cannot create a file in .*write permission"):
        export(net, target)
    locked.chmod(0o700)


def test_existing_file_replaced_atomically(tmp_path):
    net = make_net((12,), [D, *SOFTMAX_HEAD])
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    export(net, path)
    assert onnx.load(str(path)).graph.output[0].name == "probabilities"


# --- dnnspec export ---------------------------------------------------------------------

MLP = [("dense", {"units": 256}), ("relu", {}), ("dense", {"units": 128}), ("relu", {}), ("dense", {"units": 10}),
       ("softmax", {})]


def _run_dir(tmp_path, net, *, history=None):
    from dnnspec.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    best = {k: v * 0.5 for k, v in net.params.items()}
    state = {"epoch": 2, "history": history or [{"epoch": 1, "val_accuracy": 0.7}, {"epoch": 2, "val_accuracy": 0.8}]}
    save_checkpoint(run / "checkpoint.npz", net, {}, best, state)
    return run, best


def test_cli_export_run_dir_uses_best_weights(tmp_path, capsys):
    from dnnspec import cli

    net = make_net((12,), [D, ("batchnorm", {}), ("relu", {}), *SOFTMAX_HEAD])
    run, best = _run_dir(tmp_path, net)
    assert cli.main(["export", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    for k, v in best.items():
        net.params[k][...] = v
    proto = onnx.load(str(run / "model.onnx"))
    assert_parity(net, proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["epochs"] == "2" and json.loads(meta["final_val_accuracy"]) == 0.8 and meta["weights"] == "best"
    args = ["export", str(run / "checkpoint.npz"), "--no-fold", "--logits", "-o", str(tmp_path / "u.onnx")]
    assert cli.main(args) == 0
    proto = onnx.load(str(tmp_path / "u.onnx"))
    assert "BatchNormalization" in ops(proto) and [o.name for o in proto.graph.output] == ["probabilities", "logits"]
    assert_parity(net, proto)


def test_cli_export_triton_repository(tmp_path):
    from dnnspec import cli

    net = make_net(IMG, [("conv2d", {"filters": 2}), ("relu", {}), ("flatten", {}), *SOFTMAX_HEAD])
    run, _ = _run_dir(tmp_path, net)
    assert cli.main(["export", str(run), "--triton", str(tmp_path / "repo")]) == 0
    folder = tmp_path / "repo" / "model"
    assert (folder / "1" / "model.onnx").read_bytes() == (run / "model.onnx").read_bytes()
    config = (folder / "config.pbtxt").read_text()
    for line in ('name: "model"', 'platform: "onnxruntime_onnx"', "max_batch_size: 1024", 'name: "input"',
                 "dims: [ 2, 9, 9 ]", 'name: "probabilities"', "dims: [ 4 ]", "data_type: TYPE_FP32"):
        assert line in config


def test_cli_export_bad_sources(tmp_path, capsys):
    from dnnspec import cli
    from dnnspec.checkpoint import model_meta, write_npz

    net = make_net((12,), [D, *SOFTMAX_HEAD])
    other = make_net((12,), [("dense", {"units": 6}), *SOFTMAX_HEAD])
    write_npz(tmp_path / "mixed.npz", {"format": 1, "kind": "net", "dtype": "float32", **model_meta(net.model)},
              {f"param/{k}": v for k, v in other.params.items()})
    assert cli.main(["export", str(tmp_path / "mixed.npz")]) == 1
    err = capsys.readouterr().err
    assert "dense1.kernel" in err and "(12, 8)" in err and "(12, 6)" in err and err.count("\n") == 1
    good = tmp_path / "good.npz"
    net.save(good)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert cli.main(["export", str(tmp_path / "cut.npz")]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err
    assert cli.main(["export", str(good), "-o", str(tmp_path / "missing" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["export", str(good), "--opset", "99"]) == 2
    assert "--opset 99 is not supported" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", str(tmp_path / "empty")]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err


def test_int8_quantization_shrinks_mlp(tmp_path, capsys):
    from dnnspec import cli

    net = make_net((784,), MLP)
    net.save(tmp_path / "mlp.npz")
    assert cli.main(["export", str(tmp_path / "mlp.npz"), "-o", str(tmp_path / "f.onnx")]) == 0
    assert cli.main(["export", str(tmp_path / "mlp.npz"), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    ratio = (tmp_path / "f.onnx").stat().st_size / (tmp_path / "q.onnx").stat().st_size
    assert ratio >= 3.0, ratio
    x = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)
    q = session(onnx.load(str(tmp_path / "q.onnx"))).run(None, {"input": x})[0]
    assert np.mean(q.argmax(1) == net.forward(x).argmax(1)) > 0.9


@pytest.mark.slow
def test_int8_keeps_fashion_mnist_accuracy(tmp_path, capsys):
    """One epoch of SGD on Fashion-MNIST, then int8: test accuracy moves by less than 1 point."""
    from dnnspec import cli
    from dnnspec.data import fashion_mnist

    try:
        ds = fashion_mnist()
    except Exception as e:  # noqa: BLE001 - the data set is an optional system package
        pytest.skip(f"Fashion-MNIST not available: {e}")
    net = Net(ir.model_from_layers((784,), MLP, scale=1 / 255), seed=0)
    x, y = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
    rng = np.random.default_rng(0)
    velocity = {k: np.zeros_like(net.params[k]) for k in net.trainable}
    for idx in np.array_split(rng.permutation(len(x))[:20000], 20000 // 128):  # a third of an epoch
        _, grads = net.loss_and_grads(x[idx], y[idx])
        for k, g in grads.items():
            velocity[k] = 0.9 * velocity[k] - 0.05 * g
            net.params[k] += velocity[k]
    net.save(tmp_path / "mlp.npz")
    xt = ds.x_test.reshape(len(ds.x_test), -1)
    np.savez(tmp_path / "fm.npz", x=x[:10], y=y[:10], x_test=xt, y_test=ds.y_test)
    args = ["export", str(tmp_path / "mlp.npz"), "--quantize", "int8", "--data", str(tmp_path / "fm.npz")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    line = next((ln for ln in out.splitlines() if ln.startswith("test accuracy")), out)
    with capsys.disabled():
        print(f"\n{line}")
    before, after = float(line.split()[2]), float(line.split()[5])
    assert before > 0.75 and abs(after - before) < 0.01, line
