"""Structured pruning (dnnspec/prune.py, ``dnnspec prune``).

The reference for exactness: the ORIGINAL network with the input weights of the removed
channels set to zero in the layers that read them (written out by hand per network below,
not with the module's own index maps) computes what the pruned network computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnnspec import checkpoint, frontend, prune
from dnnspec.cli import main
from dnnspec.engine.net import Net

MLP = """network mlp
input [6]
classes 3
layers {
  dense 8
  batchnorm
  leaky_relu learn=true per=channel
  dense 7
  batchnorm
  relu
  dense 3
  softmax
}
"""

CNN = """network cnn
input image[2, 8, 8]
classes 3
layers {
  conv2d 6 kernel=3 padding=same
  batchnorm
  relu
  maxpool 2
  conv2d 5 kernel=3 padding=same
  batchnorm
  relu
  avgpool 2
  flatten
  dense 9
  relu
  dropout 0.2
  dense 3
  softmax
}
"""

# A residual add (conv1's and conv4's channels join there: kept whole) and a concat (a, b: pruned,
# mapped into conv4's input channels 0..5 and 6..10).
GRAPH = """network graph
input image[3, 8, 8]
classes 4
layers {
  conv2d 6 kernel=3 padding=same bias=false
  batchnorm
  relu
  conv2d 6 kernel=3 padding=same name=a
  batchnorm
  relu
  conv2d 5 kernel=1 from=relu1 name=b
  concat relu2, b
  conv2d 6 kernel=3 padding=same
  batchnorm
  add bn3, relu1
  maxpool 2
  flatten
  dense 7
  relu
  dense 4
  softmax
}
"""


def _random_net(text: str, seed: int = 0) -> Net:
    """A float64 Net with every array random (batch-norm statistics too, variances positive)."""
    net = Net(frontend.parse(text), dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for name, v in net.params.items():
        if name.endswith("running_var"):
            v[...] = rng.uniform(0.5, 2.0, v.shape)
        else:
            v[...] = rng.normal(0.0, 0.5, v.shape)
    return net


def _pruned_net(pr: prune.Pruned) -> Net:
    net = Net(pr.model, dtype=np.float64)
    checkpoint.restore_params(net.params, pr.params, "pruned", prefix="")
    return net


def _removed(pr: prune.Pruned, name: str, width: int) -> np.ndarray:
    return np.setdiff1d(np.arange(width), pr.kept[name])


def _check_same(original: Net, zeroed: dict[str, np.ndarray], pr: prune.Pruned, x: np.ndarray) -> None:
    for name, value in zeroed.items():
        original.params[name][...] = value
    want = original.logits(x)
    got = _pruned_net(pr).logits(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_mlp_with_batch_norm_equals_the_original_with_removed_units_zeroed():
    net = _random_net(MLP)
    pr = prune.prune(net.model, net.params, 0.5)
    assert set(pr.kept) == {"dense1", "dense2"}  # dense3 gives the classes
    assert [lay.out_shape for lay in pr.model.layers][:5] == [(4,), (4,), (4,), (4,), (4,)]
    k2, k3 = net.params["dense2.kernel"].copy(), net.params["dense3.kernel"].copy()
    k2[_removed(pr, "dense1", 8)] = 0.0
    k3[_removed(pr, "dense2", 7)] = 0.0
    x = np.random.default_rng(1).normal(size=(11, 6))
    _check_same(net, {"dense2.kernel": k2, "dense3.kernel": k3}, pr, x)


def test_cnn_with_batch_norm_and_pooling_equals_the_original_with_removed_filters_zeroed():
    net = _random_net(CNN)
    pr = prune.prune(net.model, net.params, 0.5)
    assert set(pr.kept) == {"conv1", "conv2", "dense1"}
    k2, d1, d2 = (net.params[k].copy() for k in ("conv2.kernel", "dense1.kernel", "dense2.kernel"))
    k2[:, _removed(pr, "conv1", 6)] = 0.0
    for c in _removed(pr, "conv2", 5):  # flatten of (5, 2, 2): channel c is features 4c .. 4c+3
        d1[4 * c:4 * c + 4] = 0.0
    d2[_removed(pr, "dense1", 9)] = 0.0
    x = np.random.default_rng(2).normal(size=(7, 2, 8, 8))
    _check_same(net, {"conv2.kernel": k2, "dense1.kernel": d1, "dense2.kernel": d2}, pr, x)
    assert pr.params["bn2.running_var"].shape == (len(pr.kept["conv2"]),)


def test_graph_with_residual_add_and_concat_equals_the_original_with_removed_channels_zeroed():
    net = _random_net(GRAPH)
    pr = prune.prune(net.model, net.params, 0.5)
    assert set(pr.kept) == {"a", "b", "dense1"}  # conv1 and conv4 feed the add: kept whole
    k4, d2 = net.params["conv4.kernel"].copy(), net.params["dense2.kernel"].copy()
    k4[:, _removed(pr, "a", 6)] = 0.0
    k4[:, 6 + _removed(pr, "b", 5)] = 0.0  # concat: b's channels follow a's six
    d2[_removed(pr, "dense1", 7)] = 0.0
    x = np.random.default_rng(3).normal(size=(5, 3, 8, 8))
    _check_same(net, {"conv4.kernel": k4, "dense2.kernel": d2}, pr, x)
    assert pr.model.layer("conv4").params[0].shape == (6, len(pr.kept["a"]) + len(pr.kept["b"]), 3, 3)


def test_scores_follow_batch_norm_gamma_else_the_weight_norm():
    net = _random_net(MLP)
    net.params["bn1.gamma"][...] = [0.1, -3.0, 0.2, 2.0, -0.05, 1.0, 0.3, -0.4]
    pr = prune.prune(net.model, net.params, 0.5)
    np.testing.assert_array_equal(pr.kept["dense1"], [1, 3, 5, 7])  # |gamma| largest four, in order
    cnn = _random_net(CNN)
    k = cnn.params["dense1.kernel"]
    np.testing.assert_allclose(prune.scores(cnn.model, cnn.params, "dense1"), np.linalg.norm(k, axis=0))


def test_keep_one_changes_nothing_and_the_spec_text_parses_back():
    net = _random_net(GRAPH)
    same = prune.prune(net.model, net.params, 1.0)
    assert same.kept == {}
    pr = prune.prune(net.model, net.params, 0.3)
    back = prune.reparse(pr.model)
    assert back.arrays == pr.model.arrays and back.source
    assert prune.count(pr.model)[0] < prune.count(net.model)[0]
    assert prune.count(pr.model)[1] < prune.count(net.model)[1]


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5, float("nan")])
def test_prune_refuses_a_keep_outside_zero_one(keep):
    net = _random_net(MLP)
    with pytest.raises(Exception, match="keep must be a fraction"):
        prune.prune(net.model, net.params, keep)


# --- the command ---------------------------------------------------------------------------


def _save_run(tmp_path: Path, text: str, name: str = "run") -> Path:
    net = _random_net(text)
    net32 = Net(net.model, dtype=np.float32)
    for k, v in net.params.items():
        net32.params[k][...] = v
    run = tmp_path / name
    checkpoint.save_net(net32, run / "model.npz")
    return run


@pytest.mark.parametrize("args, code, message", [
    (["--keep", "0"], 2, "--keep: expected a fraction in (0, 1]"),
    (["--keep", "1.2"], 2, "--keep: expected a fraction in (0, 1]"),
    (["--keep", "half"], 2, "--keep: expected a fraction in (0, 1]"),
])
def test_cli_refuses_bad_keep(tmp_path, capsys, args, code, message):
    run = _save_run(tmp_path, MLP)
    with pytest.raises(SystemExit) as e:
        main(["prune", str(run), *args, "-o", str(tmp_path / "new")])
    assert e.value.code == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_cli_refuses_a_missing_run_and_an_existing_output(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nothing"), "--keep", "0.5", "-o", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing: no such run folder" in err
    run = _save_run(tmp_path, MLP)
    other = _save_run(tmp_path, MLP, "other")
    assert main(["prune", str(run), "--keep", "0.5", "-o", str(other), "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pass --overwrite" in err
    assert main(["prune", str(run), "--keep", "0.5", "-o", str(run), "--no-eval"]) == 2
    assert "names the run being pruned" in capsys.readouterr().err
    assert main(["prune", str(run), "--keep", "0.5", "-o", str(other), "--no-eval", "--overwrite"]) == 0
    assert checkpoint.load_model(other).model.layer("dense1").out_shape == (4,)


def test_cli_writes_a_run_that_exports_and_matches_the_engine(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from dnnspec import load

    run = _save_run(tmp_path, GRAPH)
    new = tmp_path / "pruned"
    assert main(["prune", str(run), "--keep", "0.5", "-o", str(new), "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "FLOPs/example:" in out
    assert (new / "spec.dnn").read_text() == checkpoint.load_model(new).model.source
    assert main(["export", str(new), "-o", str(tmp_path / "p.onnx")]) == 0
    assert main(["export", str(run), "-o", str(tmp_path / "o.onnx")]) == 0
    proto = onnx.load(str(tmp_path / "p.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(4).normal(size=(6, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, load(new).forward(x), atol=1e-5)
    assert (tmp_path / "p.onnx").stat().st_size < (tmp_path / "o.onnx").stat().st_size


def test_cli_finetunes_into_the_new_run_and_reports_accuracy(tmp_path, capsys):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    np.savez(tmp_path / "d.npz", x=x[:200], y=y[:200], x_test=x[200:], y_test=y[200:])
    run = _save_run(tmp_path, MLP)
    new = tmp_path / "tuned"
    assert main(["prune", str(run), "--keep", "0.5", "-o", str(new), "--finetune", "2", "--data",
                 str(tmp_path / "d.npz"), "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy before:" in out and "test accuracy after fine-tuning:" in out
    assert (new / "checkpoint.npz").is_file() and (new / "history.csv").read_text().count("\n") == 3
    assert (new / "metrics.json").is_file()  # the test report, as dnnspec train writes it
    assert checkpoint.load_model(new).model.layer("dense2").out_shape == (4,)
