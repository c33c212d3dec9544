"""Saved networks and checkpoints: round trips, no pickle, atomic writes, clear errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import dnnspec
from dnnspec import ir
from dnnspec.api import load as load_net
from dnnspec.checkpoint import (
    atomic_write,
    load_checkpoint,
    model_from_dict,
    read_npz,
    save_checkpoint,
    save_net,
)
from dnnspec.engine.net import Net
from dnnspec.errors import CheckpointError

SPEC = """network tiny
input [3]
normalize auto
classes 2
layers {
  dense 4
  batchnorm
  leaky_relu learn=true per=channel
  dense 2
  softmax
}
optimizer adam lr=0.01
train epochs=2 batch=8 seed=5
"""


def code_model():
    return ir.model_from_layers((1, 4, 4), [("conv2d", {"filters": 2, "kernel": 3, "padding": "same"}),
                                            ("batchnorm", {}), ("elu", {"learn": True}), ("flatten", {}),
                                            ("dense", {"units": 3}), ("softmax", {})], scale=0.5)


def perturbed(net, seed=1):
    rng = np.random.default_rng(seed)
    for v in net.params.values():
        v[...] = rng.uniform(0.5, 1.5, size=v.shape)  # positive: valid variances and stds too
    return net


def test_round_trip_from_spec_text(tmp_path):
    net = perturbed(dnnspec.compile(SPEC))
    save_net(net, tmp_path / "m.npz")
    back = dnnspec.load(tmp_path / "m.npz")
    assert back.model.name == "tiny" and back.model.source == SPEC
    assert back.params.keys() == net.params.keys()
    assert "input.mean" in back.params and "bn1.running_var" in back.params
    for k in net.params:
        assert np.array_equal(back.params[k], net.params[k]), k
    x = np.random.default_rng(0).normal(size=(5, 3))
    assert np.array_equal(back.forward(x), net.forward(x))


def test_round_trip_of_a_model_built_in_code(tmp_path):
    m = code_model()
    assert model_from_dict(json.loads(m.to_json())).layers == m.layers
    net = perturbed(Net(m))
    net.save(tmp_path / "c.npz")
    back = load_net(tmp_path / "c.npz")
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
    assert back.model.input.scale == 0.5
    assert np.array_equal(back.forward(x), net.forward(x))


def test_files_load_without_pickle_and_hold_json_meta(tmp_path):
    net = dnnspec.compile(SPEC)
    save_net(net, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["meta"].dtype == np.uint8
        meta = json.loads(z["meta"].tobytes())
        assert all(z[k].dtype != object for k in z.files)
    assert meta["format"] == 1 and meta["kind"] == "net" and meta["spec"] == SPEC


def test_float64_net_round_trips_its_dtype(tmp_path):
    net = perturbed(dnnspec.compile(SPEC, dtype=np.float64))
    save_net(net, tmp_path / "d.npz")
    back = load_net(tmp_path / "d.npz")
    assert back.dtype == np.float64
    assert np.array_equal(back.params["dense1.kernel"], net.params["dense1.kernel"])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz: no such"):
        load_net(tmp_path / "nope.npz")


def test_truncated_file(tmp_path):
    save_net(dnnspec.compile(SPEC), tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.npz: corrupt or truncated"):
        load_net(tmp_path / "t.npz")


def test_garbage_and_foreign_npz(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_net(tmp_path / "g.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a dnnspec model file"):
        load_net(tmp_path / "f.npz")
    np.savez(tmp_path / "p.npz", meta=np.array([{"a": 1}], dtype=object))  # a pickled entry
    with pytest.raises(CheckpointError):
        load_net(tmp_path / "p.npz")


def test_parameter_shape_mismatch_names_the_parameter(tmp_path):
    net = dnnspec.compile(SPEC)
    save_net(net, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        entries = {n: z.read(n) for n in z.namelist()}
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/dense2.kernel"] = np.zeros((4, 3), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert "meta.npy" in entries
    expect = r"dense2\.kernel: the spec expects shape \(4, 2\), the file holds \(4, 3\)"
    with pytest.raises(CheckpointError, match=expect):
        load_net(tmp_path / "bad.npz")
    del arrays["param/dense2.kernel"]
    np.savez(tmp_path / "miss.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"parameter dense2\.kernel \(4, 2\) but the file does not"):
        load_net(tmp_path / "miss.npz")


def test_newer_format_is_refused(tmp_path):
    meta = np.frombuffer(json.dumps({"format": 99, "kind": "net"}).encode(), np.uint8)
    np.savez(tmp_path / "new.npz", meta=meta)
    with pytest.raises(CheckpointError, match="newer"):
        read_npz(tmp_path / "new.npz")


def test_saved_model_is_not_a_resumable_checkpoint(tmp_path):
    save_net(dnnspec.compile(SPEC), tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "m.npz")


def test_checkpoint_round_trip(tmp_path):
    net = perturbed(dnnspec.compile(SPEC))
    opt = {"t": np.array(7, np.int64), "m/dense1.kernel": np.ones((3, 4), np.float32)}
    best = {k: v * 2 for k, v in net.params.items()}
    save_checkpoint(tmp_path / "c.npz", net, opt, best, {"epoch": 3, "rows": [{"epoch": 1, "loss": 0.5}]})
    c = load_checkpoint(tmp_path / "c.npz")
    assert c.epoch == 3 and c.meta["rows"][0]["loss"] == 0.5
    assert int(c.optimizer["t"]) == 7 and c.optimizer["t"].shape == ()
    assert np.array_equal(c.best["dense1.kernel"], best["dense1.kernel"])
    assert np.array_equal(c.params["bn1.running_mean"], net.params["bn1.running_mean"])


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_read_meta_reads_only_the_metadata(tmp_path):
    from dnnspec.checkpoint import read_meta

    net = dnnspec.compile(SPEC, seed=0)
    path = save_checkpoint(tmp_path / "c.npz", net, {"t": np.array(3)}, None, {"epoch": 4, "rows": [{"epoch": 1}]})
    meta = read_meta(path)
    assert meta["epoch"] == 4 and meta["rows"] == [{"epoch": 1}] and meta["kind"] == "checkpoint"
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.npz: corrupt or truncated"):
        read_meta(tmp_path / "cut.npz")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_meta(tmp_path / "none.npz")
