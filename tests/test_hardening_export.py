"""Export and load agree with their docs: --logits on sigmoid regression, load(RUN_DIR), honest --quantize sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dnnspec
from dnnspec import cli, ir
from dnnspec.checkpoint import read_npz, save_checkpoint
from dnnspec.engine.net import Net
from dnnspec.errors import CheckpointError, UsageError
from dnnspec.export.onnx_export import to_onnx
from dnnspec.export.runs import load_source

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def net_of(layers, loss="cross_entropy", features=4, seed=0):
    net = Net(ir.model_from_layers((features,), layers, loss=loss), seed=seed)
    rng = np.random.default_rng(seed)
    for k in net.trainable:  # not the fresh init
        net.params[k] += rng.normal(0, 0.2, net.params[k].shape).astype(np.float32)
    return net


# --- --logits ----------------------------------------------------------------------------------


def test_logits_of_a_regression_model_ending_in_sigmoid(tmp_path, capsys):
    net = net_of([("dense", {"units": 2}), ("sigmoid", {})], loss="mse")
    proto = to_onnx(net.model, net.params, logits_output=True)
    assert [o.name for o in proto.graph.output] == ["output", "logits"]
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    out, logits = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})
    want = x.astype(np.float64) @ net.params["dense1.kernel"] + net.params["dense1.bias"]  # the sigmoid's input
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-want)), atol=1e-6, rtol=0)
    net.save(tmp_path / "r.npz")
    assert cli.main(["export", str(tmp_path / "r.npz"), "--logits"]) == 0
    saved = onnx.load(str(tmp_path / "r.onnx"))
    assert [o.name for o in saved.graph.output] == ["output", "logits"]
    assert "wrote" in capsys.readouterr().out


def test_logits_refused_names_the_last_layer(tmp_path, capsys):
    net = net_of([("dense", {"units": 2}), ("tanh", {})], loss="mse")
    with pytest.raises(UsageError, match=r"--logits needs a model whose last layer is softmax or sigmoid \(the logits "
                                         r"are its input\); .* ends in tanh"):
        to_onnx(net.model, net.params, logits_output=True)
    net.save(tmp_path / "t.npz")
    assert cli.main(["export", str(tmp_path / "t.npz"), "--logits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ends in tanh" in err


# --- dnnspec.load(RUN_DIR) ---------------------------------------------------------------------------


def run_folder(tmp_path, net, best_file=False):
    """A run folder as dnnspec train leaves it: checkpoint.npz (last and best weights), maybe best.npz."""
    run = tmp_path / "run"
    run.mkdir()
    best = {k: v * 0.5 for k, v in net.params.items()}
    save_checkpoint(run / "checkpoint.npz", net, {}, best, {"epoch": 2, "history": []})
    if best_file:
        saved = Net(net.model, seed=0)
        for k, v in best.items():
            saved.params[k][...] = v
        saved.save(run / "best.npz")
    return run, best


@pytest.mark.parametrize("best_file", [False, True])
def test_load_accepts_a_run_folder_as_export_does(tmp_path, best_file):
    net = net_of([("dense", {"units": 3}), ("relu", {}), ("dense", {"units": 2}), ("softmax", {})])
    run, best = run_folder(tmp_path, net, best_file)
    loaded = dnnspec.load(run)
    exported = load_source(run).net
    for k, v in best.items():
        np.testing.assert_array_equal(loaded.params[k], v)
        np.testing.assert_array_equal(exported.params[k], v)
    last = dnnspec.load(run / "checkpoint.npz")  # a checkpoint file itself: its last epoch, as documented
    np.testing.assert_array_equal(last.params["dense1.kernel"], net.params["dense1.kernel"])
    assert dnnspec.load(run, dtype=np.float64).dtype == np.float64


def test_load_of_an_empty_folder_and_no_file_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint or model"):
        dnnspec.load(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"empty: is a folder, not a model file \(\.npz\)$") as info:
        read_npz(tmp_path / "empty", "model file")
    assert "file file" not in str(info.value)


# --- --quantize int8 on a tiny model -----------------------------------------------------------------


def test_quantize_says_when_int8_is_larger(tmp_path, capsys):
    net = net_of([("dense", {"units": 3}), ("softmax", {})])
    net.save(tmp_path / "tiny.npz")
    assert cli.main(["export", str(tmp_path / "tiny.npz"), "-o", str(tmp_path / "f.onnx")]) == 0
    assert cli.main(["export", str(tmp_path / "tiny.npz"), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    before, after = (tmp_path / "f.onnx").stat().st_size, (tmp_path / "q.onnx").stat().st_size
    assert after > before  # int8 adds more nodes and constants than it saves on 15 weights
    line = next(ln for ln in out.splitlines() if "int8 (" in ln)
    pct = int(re.search(r"\((\d+)% larger: ", line).group(1))
    assert pct == round(100 * (after - before) / before) and "smaller" not in line
    written = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert "MatMulInteger" in written  # written as asked
    assert f"wrote {tmp_path / 'q.onnx'} (" in out and f", {len(written)} nodes, " in out  # the int8 file's nodes


def test_size_change_words():
    from dnnspec.commands.export import _change

    assert _change(4000, 1000) == "4.0x smaller"
    assert _change(1000, 950) == "5% smaller"
    assert _change(1000, 1500).startswith("50% larger: ")
