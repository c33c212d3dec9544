"""Net: compiled passes, fused heads, gradients of whole networks, input pipeline, API."""

from __future__ import annotations

import dataclasses
import os
import time
import tracemalloc

import numpy as np
import pytest
from gradcheck import net_gradients, numeric_grad, rel_error

import dnnspec
from dnnspec import ir
from dnnspec.engine.conv import Conv2D
from dnnspec.engine.net import Net
from dnnspec.errors import DnnspecError

DEEP = [
    ("leaky_relu", {"learn": True, "per": "channel", "alpha": 0.3}),
    ("batchnorm", {}),
    ("elu", {"learn": True, "per": "channel", "alpha": 0.8}),
    ("flatten", {}),
    ("dense", {"units": 7, "bias": False}),  # a bias before batch norm has gradient 0: nothing to check
    ("batchnorm", {}),
    ("leaky_relu", {"learn": True, "alpha": 0.2}),
    ("dropout", {"rate": 0.3}),
    ("dense", {"units": 6, "init": "xavier_uniform"}),
    ("tanh", {}),
    ("dense", {"units": 6, "bias": False}),
    ("elu", {"learn": True}),
    ("dense", {"units": 5, "init": "lecun_normal"}),
    ("softplus", {}),
    ("dropout", {"rate": 0.2, "mode": "scale"}),
    ("dense", {"units": 5}),
    ("sigmoid", {}),
    ("dense", {"units": 4}),
    ("relu", {}),
    ("dense", {"units": 3}),
]


def richardson_grad(f, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """(4 D(h) - D(2h)) / 3 from centred differences D: error O(h^4), so a larger h keeps
    round-off small through a deep stack (plain D with h=1e-6 has round-off near 1e-5 there)."""
    return (4 * numeric_grad(f, x, h) - numeric_grad(f, x, 2 * h)) / 3


def check_net_grads(model: ir.Model, x: np.ndarray, y: np.ndarray, tol: float = 1e-6) -> Net:
    net = Net(model, dtype=np.float64, seed=3)
    for name in net.trainable:  # move gammas/betas/alphas/biases off their constant starts
        if not name.endswith(".kernel"):
            net.params[name] += np.random.default_rng(len(name)).uniform(-0.3, 0.3, net.params[name].shape)

    def f() -> float:
        return net.loss_and_grads(x, y, rng=np.random.default_rng(11))[0]

    f()
    grads = {k: v.copy() for k, v in net.grads.items()}
    assert sorted(grads) == sorted(net.trainable)
    for name in net.trainable:
        err = rel_error(grads[name], richardson_grad(f, net.params[name]))
        assert err < tol, f"{name}: {err}"
    return net


def test_deep_stacked_network_cross_entropy():
    model = ir.model_from_layers((2, 3, 3), DEEP + [("softmax", {})])
    assert len(model.layers) >= 20
    rng = np.random.default_rng(0)
    check_net_grads(model, rng.normal(size=(6, 2, 3, 3)), rng.integers(0, 3, 6))


def test_network_binary_cross_entropy_fuses_sigmoid():
    model = ir.model_from_layers((4,), [("dense", {"units": 5}), ("elu", {}), ("dense", {"units": 1}),
                                        ("sigmoid", {})], loss="binary_cross_entropy")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 4)), rng.integers(0, 2, 8)
    net = check_net_grads(model, x, y)
    p = net.forward(x)[:, 0]
    assert net.head is not None
    assert net.evaluate(x, y)["loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert np.array_equal(net.predict(x), (p > 0.5).astype(int))


def test_network_mse_on_full_output():
    model = ir.model_from_layers((3,), [("dense", {"units": 4}), ("tanh", {}), ("dense", {"units": 2}),
                                        ("sigmoid", {})], loss="mse")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    net = check_net_grads(model, x, y)
    assert net.head is None
    out = net.forward(x)
    assert np.all((out > 0) & (out < 1))
    assert net.evaluate(x, y) == {"loss": pytest.approx(np.mean((out - y) ** 2))}
    assert np.allclose(net.predict(x, batch=2), out)


def mlp(**kw) -> ir.Model:
    return ir.model_from_layers((784,), [("dense", {"units": 256}), ("relu", {}), ("dense", {"units": 128}),
                                         ("relu", {}), ("dense", {"units": 10}), ("softmax", {})], **kw)


def test_forward_matches_numpy_reference_and_softmax_head():
    net = Net(mlp(scale=1 / 255))
    x = np.random.default_rng(0).integers(0, 256, (9, 784)).astype(np.uint8)
    p = net.params
    h = x.astype(np.float64) / 255
    for i in (1, 2):
        h = np.maximum(h @ p[f"dense{i}.kernel"] + p[f"dense{i}.bias"], 0)
    z = h @ p["dense3.kernel"] + p["dense3.bias"]
    assert np.allclose(net.logits(x), z, atol=1e-5)
    e = np.exp(z - z.max(1, keepdims=True))
    out = net.forward(x)
    assert out.dtype == np.float32 and np.allclose(out, e / e.sum(1, keepdims=True), atol=1e-6)
    assert np.array_equal(net.predict(x, batch=4), z.argmax(1))
    y = np.arange(9) % 10
    ev = net.evaluate(x, y, batch=4)
    ce = -np.mean(np.log((e / e.sum(1, keepdims=True))[np.arange(9), y]))
    assert ev["loss"] == pytest.approx(ce, rel=1e-5) and ev["accuracy"] == np.mean(z.argmax(1) == y)


def test_forward_returns_fresh_arrays():
    net = Net(mlp())
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 784)).astype(np.float32)
    ya = net.forward(a)
    net.forward(b)
    assert np.allclose(ya, net.forward(a))


def test_params_order_names_and_seed():
    model = ir.model_from_layers((4,), [("dense", {"units": 3}), ("batchnorm", {}), ("leaky_relu", {"learn": True}),
                                        ("dense", {"units": 2}), ("softmax", {})], train={"seed": 42})
    net = Net(model)
    assert list(net.params) == [p.name for p in model.params]
    assert "bn1.running_mean" in net.params and "bn1.running_mean" not in net.trainable
    assert net.trainable == ["dense1.kernel", "dense1.bias", "bn1.gamma", "bn1.beta", "leaky_relu1.alpha",
                             "dense2.kernel", "dense2.bias"]
    again, other = Net(model), Net(model, seed=43)
    assert all(np.array_equal(net.params[k], again.params[k]) for k in net.params)
    assert not np.array_equal(net.params["dense1.kernel"], other.params["dense1.kernel"])
    first = np.random.default_rng(42)  # dense1 is he_normal (a ReLU-family activation follows), fan avg
    assert np.allclose(net.params["dense1.kernel"], first.normal(0, np.sqrt(4 / 7), (4, 3)), atol=1e-7)


def test_loss_and_grads_reuses_buffers_and_only_updates_bn_stats():
    model = ir.model_from_layers((6,), [("dense", {"units": 5}), ("batchnorm", {}), ("relu", {}),
                                        ("dropout", {"rate": 0.5}), ("dense", {"units": 3}), ("softmax", {})])
    net = Net(model)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    y = np.arange(10) % 3
    before = {k: v.copy() for k, v in net.params.items()}
    _, g1 = net.loss_and_grads(x, y)
    ids = {k: id(v) for k, v in g1.items()}
    _, g2 = net.loss_and_grads(x, y)
    assert {k: id(v) for k, v in g2.items()} == ids
    for k in net.params:
        same = np.array_equal(before[k], net.params[k])
        assert same != k.startswith("bn1.running"), k


def test_training_step_allocates_little():
    net = Net(mlp())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    net.loss_and_grads(x, y)
    tracemalloc.start()
    net.loss_and_grads(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # ufuncs that cast (float * bool mask) use an 8192-element scratch buffer; one hidden
    # activation alone is 128 KiB, the input batch 392 KiB
    assert peak < 64 * 1024, peak


def with_normalize(model: ir.Model, mode: str, mean=(), std=()) -> ir.Model:
    return dataclasses.replace(model, normalize=ir.Normalize(mode, tuple(mean), tuple(std)))


def test_normalize_values_broadcast_per_channel():
    base = ir.model_from_layers((3, 2, 2), [("flatten", {}), ("dense", {"units": 2}), ("softmax", {})], scale=0.5)
    net = Net(with_normalize(base, "values", [1.0], [2.0]), dtype=np.float64)
    assert np.array_equal(net.params["input.mean"], [1, 1, 1]) and np.array_equal(net.params["input.std"], [2, 2, 2])
    net2 = Net(with_normalize(base, "values", [0.0, 1.0, 2.0], [1.0, 2.0, 4.0]), dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(4, 3, 2, 2))
    h = (x * 0.5 - np.array([0, 1, 2]).reshape(1, 3, 1, 1)) / np.array([1, 2, 4]).reshape(1, 3, 1, 1)
    p = net2.params
    assert np.allclose(net2.logits(x), h.reshape(4, -1) @ p["dense1.kernel"] + p["dense1.bias"])


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4)])
def test_set_input_stats_auto(shape):
    base = ir.model_from_layers(shape, [("flatten", {}), ("dense", {"units": 2}), ("softmax", {})], scale=1 / 255)
    net = Net(with_normalize(base, "auto"))
    assert np.all(net.params["input.mean"] == 0) and np.all(net.params["input.std"] == 1)
    x = np.random.default_rng(0).integers(0, 256, (9000, *shape)).astype(np.uint8)
    x[:, 1] = 7  # constant feature / channel: std 0 -> 1
    net.set_input_stats(x)
    axes = (0,) + tuple(range(2, x.ndim))
    xf = x.astype(np.float64) / 255
    std = xf.std(axis=axes)
    std[1] = 1.0
    assert np.allclose(net.params["input.mean"], xf.mean(axis=axes), rtol=1e-6)
    assert np.allclose(net.params["input.std"], std, rtol=1e-6)
    z = net.logits(x[:3])
    cs = (1, -1) + (1,) * (x.ndim - 2)
    h = ((xf[:3] - xf.mean(axis=axes).reshape(cs)) / std.reshape(cs)).reshape(3, -1)
    assert np.allclose(z, h @ net.params["dense1.kernel"] + net.params["dense1.bias"], atol=1e-5)


def test_float32_and_float64_agree():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(16, 784)), rng.integers(0, 10, 16)
    l32, g32 = Net(mlp()).loss_and_grads(x.astype(np.float32), y)
    l64, g64 = Net(mlp(), dtype=np.float64).loss_and_grads(x, y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert np.allclose(g32["dense1.kernel"], g64["dense1.kernel"], atol=1e-5)


def test_unknown_kind_is_a_clear_error():
    base = ir.model_from_layers((4,), [("dense", {"units": 2}), ("softmax", {})])
    odd = ir.Layer("warp1", "warp", ir.FrozenDict(), (2,), (2,))
    with pytest.raises(DnnspecError, match="warp1.*'warp'"):
        Net(dataclasses.replace(base, layers=(base.layers[0], odd, base.layers[1])))


def test_compile_accepts_a_model_and_is_lazy():
    model = ir.model_from_layers((4,), [("dense", {"units": 2}), ("softmax", {})], train={"seed": 9})
    net = dnnspec.compile(model, dtype=np.float64)
    assert isinstance(net, Net) and net.dtype == np.float64
    assert np.array_equal(net.params["dense1.kernel"], Net(model, dtype=np.float64).params["dense1.kernel"])
    with pytest.raises(AttributeError):
        dnnspec.no_such_thing  # noqa: B018


def test_wrong_input_shape_is_a_data_error():
    net = Net(mlp())
    with pytest.raises(DnnspecError, match=r"shape \(N, 784\), found \(2, 785\)"):
        net.forward(np.zeros((2, 785)))
    with pytest.raises(DnnspecError, match="784"):
        net.loss_and_grads(np.zeros((2, 28, 28)), np.zeros(2, int))


def test_last_logits_give_running_accuracy():
    net = Net(mlp())
    x = np.random.default_rng(0).normal(size=(8, 784)).astype(np.float32)
    net.loss_and_grads(x, np.zeros(8, int))
    assert np.allclose(net.last_logits, net.logits(x), atol=1e-5)  # no dropout or batch norm here


def test_compile_from_path_and_text():
    from pathlib import Path

    path = Path(__file__).parent.parent / "specs" / "spirals.dnn"
    if not path.exists():
        pytest.skip("specs/spirals.dnn not present")
    a = dnnspec.compile(path)
    b = dnnspec.compile(str(path))
    c = dnnspec.compile(path.read_text())
    assert list(a.params) == [p.name for p in a.model.params]
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]) and np.array_equal(a.params[k], c.params[k])
    with pytest.raises(DnnspecError):
        dnnspec.compile("missing-file.dnn")


@pytest.mark.parametrize("pool", [
    {"kernel": 2},                                            # 2x2/2 (the tiled fast path)
    {"kernel": 3, "stride": 2},                               # overlapping windows, floor
    {"kernel": 3, "stride": 1, "padding": 1},                 # padded, heavy overlap
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_maxpool_run_as_maxpool_relu_gives_identical_results(monkeypatch, pool, dtype):
    """Net runs relu -> maxpool as maxpool -> relu; forward and every gradient are unchanged.

    Integer inputs and weights make exact ties (inside windows and between windows' maxima)
    and windows whose max is negative or zero, where the gradient must be 0.
    """
    model = ir.model_from_layers((2, 7, 7), [
        ("conv2d", {"filters": 3, "kernel": 1}), ("relu", {}), ("maxpool", pool),
        ("flatten", {}), ("dense", {"units": 4}), ("softmax", {})])
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (6, 2, 7, 7)).astype(dtype)
    y = rng.integers(0, 4, 6)
    kernel = rng.integers(-2, 3, (3, 2, 1, 1))
    results = []
    monkeypatch.setattr(Net, "fuse_conv_maxpool", False)  # its own test below; GEMM sums differ in float32
    for commute in (False, True):
        monkeypatch.setattr(Net, "commute_relu_maxpool", commute)
        net = Net(model, dtype=dtype, seed=1)
        net.params["conv1.kernel"][...] = kernel
        net.params["conv1.bias"][...] = [0, -1, 1]
        kinds = [op.layer.kind for op in net.run_body]
        assert kinds[1:3] == (["maxpool", "relu"] if commute else ["relu", "maxpool"])
        assert [op.layer.kind for op in net.body][1:3] == ["relu", "maxpool"]  # layer order kept
        loss, grads = net.loss_and_grads(x, y)
        results.append((net.forward(x), net.logits(x), loss, {k: v.copy() for k, v in grads.items()}))
    (p0, z0, l0, g0), (p1, z1, l1, g1) = results
    assert (g0["conv1.kernel"] != 0).any() and l0 == l1
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(z0, z1)
    assert sorted(g0) == sorted(g1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


@pytest.mark.parametrize("conv,pool,shape", [
    ({"filters": 3, "kernel": 3}, {"kernel": 2}, (1, 9, 9)),                           # unfold, odd size: floor
    ({"filters": 3, "kernel": 3, "padding": "same"}, {"kernel": 2}, (2, 8, 8)),         # unfold, padded conv
    ({"filters": 4, "kernel": 3, "stride": 2}, {"kernel": 3}, (2, 13, 11)),             # strided conv, 3x3 pool
    ({"filters": 5, "kernel": [3, 2]}, {"kernel": [2, 3]}, (3, 9, 10)),                 # rectangular
    ({"filters": 6, "kernel": 3}, {"kernel": 2}, (6, 9, 9)),                            # rows layout (K = 54)
    ({"filters": 6, "kernel": 3, "bias": False}, {"kernel": 2}, (6, 8, 7)),             # rows, no bias
    ({"filters": 3, "kernel": 2, "bias": False}, {"kernel": 2}, (2, 7, 7)),             # unfold, no bias
    ({"filters": 5, "kernel": 3, "padding": "same"}, {"kernel": 2}, (6, 8, 8)),         # rows, windows cover all
])
@pytest.mark.parametrize("bn", [False, True], ids=["direct", "through-batchnorm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_feeding_a_tiling_maxpool_gives_the_plain_results(monkeypatch, conv, pool, shape, dtype, bn):
    """A conv2d handing its output window-major to the maxpool after it (Net.fuse_conv_maxpool):
    forward, loss and every gradient as with the plain NCHW hand-over; exact with integers.

    Integer inputs and weights tie inside windows all the time (the first maximum in
    row-major order must get the gradient), and every product is exact, so float64 results
    must be identical; float32 may differ by the GEMMs' summation order only.
    """
    # The unfused side must compute exactly too: not Winograd's tiles (inexact, so ties break elsewhere)
    monkeypatch.setattr(Conv2D, "use_winograd", False)
    model = ir.model_from_layers(shape, [("conv2d", conv)] + [("batchnorm", {})] * bn + [
        ("relu", {}), ("maxpool", pool), ("conv2d", {"filters": 2, "kernel": 1}),
        ("flatten", {}), ("dense", {"units": 3}), ("softmax", {})])
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, (5, *shape)).astype(dtype)
    y = rng.integers(0, 3, 5)
    results = []
    for fuse in (False, True):
        monkeypatch.setattr(Net, "fuse_conv_maxpool", fuse)
        net = Net(model, dtype=dtype, seed=1)
        kernel = net.params["conv1.kernel"]
        kernel[...] = rng.integers(-2, 3, kernel.shape) if not results else results[0][4]
        conv1 = net.run_body[0]
        pooled = fuse and (not bn or net.run_body[1 + bn]._covers_all())
        assert (conv1.pool is not None) == pooled and conv1.layout == ("rows" if shape[0] == 6 else "unfold")
        if bn and shape in ((2, 8, 8), (2, 7, 7), (6, 8, 8)):
            assert pooled == fuse  # these cases do go through the batch norm
        if bn:  # through a batch norm only when the windows cover every pixel (its statistics count them all)
            assert (net.run_body[1].layout is not None) == pooled
        loss, grads = net.loss_and_grads(x, y)
        results.append((net.forward(x), net.logits(x), loss, {k: v.copy() for k, v in grads.items()},
                        kernel.copy(), {k: v.copy() for k, v in net.params.items() if "running" in k}))
    (p0, z0, l0, g0, _, r0), (p1, z1, l1, g1, _, r1) = results
    assert (g0["conv1.kernel"] != 0).any()
    tol = {"rtol": 1e-10, "atol": 1e-11}
    if dtype == np.float32:  # float32 GEMMs and batch-norm sums add up in another order
        tol = {"rtol": 1e-4, "atol": 1e-5} if bn else {"rtol": 1e-5, "atol": 1e-6}
    for k in r0:  # batch-norm running statistics, from the blocks' channels
        np.testing.assert_allclose(r1[k], r0[k], err_msg=k, **tol)
    np.testing.assert_allclose(p1, p0, **tol)
    np.testing.assert_allclose(z1, z0, **tol)
    np.testing.assert_allclose(l1, l0, **tol)
    assert sorted(g0) == sorted(g1)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], err_msg=k, **tol)


@pytest.mark.parametrize("conv,shape", [({"filters": 3, "kernel": 3, "padding": "same"}, (2, 8, 8)),   # unfold
                                         ({"filters": 5, "kernel": 3, "padding": "same"}, (6, 8, 8))])  # rows
def test_batch_norm_between_a_conv_and_its_pool_gives_the_numpy_bits_compiled(monkeypatch, conv, shape):
    """The compiled batch-norm passes on a conv's window-major blocks ((C, M) and (N, kk, P, C)) do the
    NumPy passes' arithmetic: forward, loss, gradients and running statistics to the bit."""
    from dnnspec.engine import fused

    if fused.kernels() is None:
        pytest.skip("needs numba (the fast extra)")
    model = ir.model_from_layers(shape, [("conv2d", conv), ("batchnorm", {}), ("relu", {}), ("maxpool", {"kernel": 2}),
                                         ("flatten", {}), ("dense", {"units": 3}), ("softmax", {})])
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((6, *shape)).astype(np.float32), rng.integers(0, 3, 6)
    results = []
    for value in ("auto", "0"):
        monkeypatch.setenv(fused.ENV, value)
        net = Net(model, seed=2)
        assert net.run_body[1].layout is not None  # the batch norm sits in the hand-over
        loss, grads = net.loss_and_grads(x, y)
        assert (net.run_body[1].compiled is not None) == (value == "auto")
        results.append((loss, {k: v.copy() for k, v in grads.items()},
                        {k: v.copy() for k, v in net.params.items() if "running" in k}))
    (l0, g0, r0), (l1, g1, r1) = results
    assert l0 == l1
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)


def test_fused_conv_maxpool_pairs_match_finite_differences():
    """conv (unfold) -> relu -> maxpool -> conv (rows) -> relu -> maxpool -> dense, both pairs fused, float64."""

    model = ir.model_from_layers((2, 9, 9), [
        ("conv2d", {"filters": 4, "kernel": 2}), ("relu", {}), ("maxpool", {"kernel": 2}),
        ("conv2d", {"filters": 3, "kernel": 3, "padding": "same"}), ("relu", {}), ("maxpool", {"kernel": 2}),
        ("flatten", {}), ("dense", {"units": 3}), ("softmax", {})])
    net = Net(model, dtype=np.float64, seed=0)
    assert [op.layout for op in net.run_body if op.layer.kind == "conv2d"] == ["unfold", "rows"]
    assert all(op.pool is not None for op in net.run_body if op.layer.kind == "conv2d")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 9, 9))
    y = rng.integers(0, 3, 3)
    _, grads = net.loss_and_grads(x, y)
    grads = {k: v.copy() for k, v in grads.items()}
    for name in ("conv1.kernel", "conv1.bias", "conv2.kernel", "conv2.bias", "dense1.kernel"):
        num = numeric_grad(lambda: net.loss_and_grads(x, y)[0], net.params[name])
        assert rel_error(grads[name], num) < 1e-6, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_own_threads_split_every_pass_and_gemm_without_changing_results(monkeypatch, dtype):
    """engine/threads.py with 3 threads and no size thresholds: every parallel pass and GEMM of a
    CNN with both conv layouts, fused pairs, a plain pool and dense layers is split into pieces;
    forward, loss and gradients equal the unsplit run (exactly up to the GEMMs' partial sums)."""
    from dnnspec.engine import threads

    model = ir.model_from_layers((2, 12, 12), [
        ("conv2d", {"filters": 4, "kernel": 2}), ("relu", {}), ("maxpool", {"kernel": 2}),       # fused, wide
        ("conv2d", {"filters": 5, "kernel": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
        ("maxpool", {"kernel": 2}),                                                               # tiled, plain
        ("conv2d", {"filters": 3, "kernel": 3, "padding": 1}), ("relu", {}),
        ("maxpool", {"kernel": 2, "stride": 1}), ("flatten", {}), ("dense", {"units": 6}), ("relu", {}),
        ("dense", {"units": 3}), ("softmax", {})])
    rng = np.random.default_rng(9)
    x = rng.integers(-3, 4, (7, 2, 12, 12)).astype(dtype)
    y = rng.integers(0, 3, 7)
    results, calls = [], []
    real_parallel = threads.parallel

    def counting(fn, n, size):
        calls.append((threads.active(), n))
        return real_parallel(fn, n, size)

    for count in ("1", "3"):
        monkeypatch.setenv("DNNSPEC_THREADS", count)
        monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
        monkeypatch.setattr(threads, "MATMUL_MIN", 1)
        for mod in ("dnnspec.engine.conv", "dnnspec.engine.ops"):
            monkeypatch.setattr(f"{mod}.parallel", counting)
        net = Net(model, dtype=dtype, seed=2)
        assert net._threads  # a conv net: own threads by default
        loss, grads = net.loss_and_grads(x, y)
        results.append((net.forward(x), loss, {k: v.copy() for k, v in grads.items()}))
    (p0, l0, g0), (p1, l1, g1) = results
    assert sum(1 for active, n in calls if active and n > 1) > 10  # the 3-thread run really split
    assert not any(active for active, _ in calls[:len(calls) // 2])  # the 1-thread run did not
    tol = {"rtol": 2e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(p1, p0, **tol)
    np.testing.assert_allclose(l1, l0, **tol)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], err_msg=k, **tol)


def test_threads_matmul_splits_rows_columns_and_the_reduction(monkeypatch):
    from dnnspec.engine import threads

    monkeypatch.setenv("DNNSPEC_THREADS", "3")
    monkeypatch.setattr(threads, "MATMUL_MIN", 1)
    rng = np.random.default_rng(0)
    cases = [((300, 40), (40, 20)),      # rows
             ((20, 40), (40, 300)),      # columns
             ((6, 5000), (5000, 7)),     # reduction (small output)
             ((1, 90, 8), (9, 8, 4))]    # batched, broadcast a
    for sa, sb in cases:
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        out = np.empty(np.broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1]))
        with threads.own_threads():
            threads.matmul(a, b, out)
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)


def test_threads_parallel_reraises_a_piece_error(monkeypatch):
    from dnnspec.engine import threads

    monkeypatch.setenv("DNNSPEC_THREADS", "2")
    done = []

    def fn(lo, hi):
        if lo > 0:
            raise ValueError("piece failed")
        done.append((lo, hi))

    with threads.own_threads(), pytest.raises(ValueError, match="piece failed"):
        threads.parallel(fn, 10, 1 << 20)
    assert done == [(0, 5)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threads_work_in_a_forked_child(monkeypatch):
    """The worker pool does not survive fork(); a child must build its own instead of waiting forever."""
    from dnnspec.engine import threads

    monkeypatch.setenv("DNNSPEC_THREADS", "2")
    pieces = []
    with threads.own_threads():
        threads.parallel(lambda lo, hi: pieces.append((lo, hi)), 4, 1 << 20)  # the parent's pool exists
    assert sorted(pieces) == [(0, 2), (2, 4)]
    pid = os.fork()
    if pid == 0:  # child: split again, exit 0 on success
        try:
            got = []
            with threads.own_threads():
                threads.parallel(lambda lo, hi: got.append((lo, hi)), 4, 1 << 20)
            os._exit(0 if sorted(got) == [(0, 2), (2, 4)] else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the forked child hung on the thread pool")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_conv_batchnorm_maxpool_through_both_layouts_matches_finite_differences():
    """conv (unfold) -> batchnorm -> relu -> maxpool -> conv (rows) -> batchnorm -> relu -> maxpool,
    both norms passing window-major blocks, in float64 against finite differences."""
    model = ir.model_from_layers((2, 8, 8), [
        ("conv2d", {"filters": 4, "kernel": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
        ("maxpool", {"kernel": 2}),
        ("conv2d", {"filters": 3, "kernel": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
        ("maxpool", {"kernel": 2}), ("flatten", {}), ("dense", {"units": 3}), ("softmax", {})])
    net = Net(model, dtype=np.float64, seed=0)
    norms = [op for op in net.run_body if op.layer.kind == "batchnorm"]
    assert [op.layout for op in norms] == ["unfold", "rows"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 8, 8))
    y = rng.integers(0, 3, 3)
    names = ("conv1.kernel", "conv1.bias", "bn1.gamma", "bn1.beta", "conv2.kernel", "conv2.bias", "bn2.gamma",
             "dense1.kernel")
    for name, (got, num) in net_gradients(net, x, y, names).items():
        if name.endswith(".bias") and name.startswith("conv"):  # a batch norm right after cancels it: ~0
            assert np.abs(got).max() < 1e-8 and np.abs(num).max() < 1e-6, name
        else:
            assert rel_error(got, num) < 1e-6, name
    net.forward(x)  # evaluation mode through both layouts, running statistics


def test_predict_and_evaluate_default_to_the_memory_bounded_evaluation_batch(monkeypatch):
    """Without ``batch``, a conv net's passes take memory.eval_batch rows (its scratch within 256 MiB), not 1024."""
    from dnnspec import frontend, memory

    m = frontend.parse("input image[3, 64, 64]\nclasses 4\nlayers {\n  conv2d 32 kernel=3 padding=same\n  relu\n"
                       "  global_avgpool\n  dense 4\n  softmax\n}\n")
    rows = memory.eval_batch(m)
    assert 1 < rows < 1024
    net = Net(m, seed=0)
    seen = []
    run = net._run
    monkeypatch.setattr(net, "_run", lambda ops, x, *a, **k: seen.append(len(x)) or run(ops, x, *a, **k))
    x = np.random.default_rng(0).normal(size=(rows + 3, 3, 64, 64)).astype(np.float32)
    labels = net.predict(x)
    assert seen == [rows, 3] and labels.shape == (rows + 3,)
    seen.clear()
    assert net.evaluate(x, np.zeros(rows + 3, np.int64))["accuracy"] == float(np.mean(labels == 0))
    assert seen == [rows, 3]
    np.testing.assert_array_equal(net.predict(x, batch=7), labels)  # the same classes in other chunks
