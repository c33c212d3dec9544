"""Issue 12's layer kinds and options: gelu, silu, selu, layernorm, global_maxpool, pools with
padding=same, channel dropout.

Each gets a finite-difference check of its op in float64 (rel. error below 1e-6), a formula
check where the formula is short, and onnxruntime parity of an exported network (1e-5), at
the default opset and at an older one where the converter writes a decomposition.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from dnnspec import ir, registry
from dnnspec.engine import conv, ops  # noqa: F401  (registers the ops)
from dnnspec.engine.base import compile_op
from dnnspec.engine.init import init_param
from dnnspec.errors import SpecError
from dnnspec.registry import LAYERS

F64 = np.float64


def make_op(kind, in_shape, dtype=F64, seed=0, **opts):
    layer = ir.build_layers(in_shape, [ir.LayerDecl(kind, LAYERS[kind].bind([], dict(opts))[0])])[0]
    rng = np.random.default_rng(seed)
    params = {p.name: init_param(p, rng, dtype) for p in layer.params}
    for name in params:  # gamma and beta away from 1 and 0, so that their gradients matter
        params[name] = rng.normal(0.5, 0.5, params[name].shape).astype(dtype)
    return compile_op(layer, dtype), params, layer


def check_grads(kind, in_shape, n=4, seed=0, x=None, h=1e-6, **opts):
    """Every analytic gradient (dx and each parameter) against centred differences of sum(y * w).

    Linear and piecewise-linear ops take a larger ``h``, clear of the round-off that h=1e-6 leaves on their
    smallest gradients: 1e-3 (exact) for the linear ones, conv2d, avgpool and dropout; 1e-5 for the max pools, whose
    random inputs hold near-ties closer than 1e-3 (the perturbation would move the maximum).
    """
    op, params, layer = make_op(kind, in_shape, seed=seed, **opts)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(n, *in_shape)) if x is None else x
    w = rng.normal(size=(n, *layer.out_shape))

    def f() -> float:
        return float(np.sum(op.forward(x, params, True, np.random.default_rng(7)) * w))

    f()
    grads: dict[str, np.ndarray] = {}
    dx = op.backward(w.copy(), params, grads).copy()
    assert rel_error(dx, numeric_grad(f, x, h)) < 1e-6, "dx"
    for p in layer.params:
        assert rel_error(grads[p.name], numeric_grad(f, params[p.name], h)) < 1e-6, p.name
    return op, params, x


GRAD_CASES = [
    ("gelu", (7,), {}),
    ("gelu", (2, 3, 3), {}),
    ("silu", (7,), {}),
    ("selu", (7,), {}),
    ("selu", (2, 3, 3), {}),
    ("layernorm", (6,), {}),
    ("layernorm", (3, 2, 4), {}),
    ("layernorm", (3, 2, 4), {"eps": 1e-3}),
    ("global_maxpool", (3, 4, 5), {"h": 1e-5}),
    ("maxpool", (2, 7, 7), {"kernel": 2, "padding": "same", "h": 1e-5}),
    ("maxpool", (2, 7, 6), {"kernel": 3, "stride": 2, "padding": "same", "h": 1e-5}),
    ("avgpool", (2, 7, 7), {"kernel": 2, "padding": "same", "h": 1e-3}),
    ("avgpool", (2, 5, 6), {"kernel": 3, "stride": 2, "padding": "same", "h": 1e-3}),
    ("conv2d", (2, 7, 7), {"filters": 3, "dilation": 2, "h": 1e-3}),
    ("conv2d", (2, 9, 8), {"filters": 3, "kernel": [3, 2], "dilation": [2, 3], "stride": 2, "padding": "same",
                           "h": 1e-3}),
    ("conv2d", (4, 7, 7), {"filters": 4, "groups": 4, "stride": 2, "padding": 1, "h": 1e-3}),  # depthwise
    ("conv2d", (4, 8, 7), {"filters": 4, "groups": 4, "dilation": 2, "stride": [2, 1], "padding": "same", "h": 1e-3}),
    ("conv2d", (4, 6, 6), {"filters": 6, "groups": 2, "kernel": 2, "bias": False, "h": 1e-3}),
    ("conv2d", (6, 8, 8), {"filters": 3, "groups": 3, "kernel": 3, "dilation": 3, "padding": 2, "h": 1e-3}),
    ("dropout", (3, 4, 4), {"rate": 0.5, "channels": True, "h": 1e-3}),
    ("dropout", (3, 4, 4), {"rate": 0.5, "channels": True, "mode": "scale", "h": 1e-3}),
]


@pytest.mark.parametrize("kind,shape,opts", GRAD_CASES, ids=[f"{k}-{len(s)}d-{o}" for k, s, o in GRAD_CASES])
def test_finite_differences(kind, shape, opts):
    check_grads(kind, shape, **opts)


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-9, 9, 40001), [0.0, -0.0, 6.0, -6.0, 1e-300, 30.0]])
    want = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(ops.erf(x) - want)) < 5e-15
    assert ops.erf(np.float32([0.5])).dtype == np.float32


def test_activation_formulas():
    x = np.linspace(-4, 4, 81).reshape(1, -1)
    gelu, _, _ = make_op("gelu", (81,))
    want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x[0]])
    np.testing.assert_allclose(gelu.forward(x, {}, False, None)[0], want, rtol=0, atol=1e-14)
    silu, _, _ = make_op("silu", (81,))
    np.testing.assert_allclose(silu.forward(x, {}, False, None)[0], x[0] / (1 + np.exp(-x[0])), atol=1e-14)
    selu, _, _ = make_op("selu", (81,))
    lam, alpha = 1.0507009873554805, 1.6732632423543772
    want = np.where(x[0] > 0, lam * x[0], lam * alpha * np.expm1(x[0]))
    np.testing.assert_allclose(selu.forward(x, {}, False, None)[0], want, atol=1e-14)


def test_layernorm_normalises_each_example_over_c_h_w():
    op, params, _ = make_op("layernorm", (3, 2, 4))
    params = {k: (np.ones_like(v) if k.endswith("gamma") else np.zeros_like(v)) for k, v in params.items()}
    x = np.random.default_rng(0).normal(3.0, 2.0, (5, 3, 2, 4))
    y = op.forward(x, params, False, None)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(1, 2, 3)), 1, atol=1e-4)  # eps = 1e-5 of a variance near 4
    # one example's statistics do not depend on the others (unlike batch norm)
    np.testing.assert_allclose(op.forward(x[:1], params, True, None), y[:1], atol=1e-12)


def test_global_maxpool_routes_to_first_maximum():
    op, _, _ = make_op("global_maxpool", (1, 2, 2))
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    assert op.forward(x, {}, True, None).tolist() == [[3.0]]
    assert op.backward(np.array([[2.0]]), {}, {}).tolist() == [[[[0.0, 2.0], [0.0, 0.0]]]]


def test_pool_padding_same_keeps_ceil_size():
    layer = ir.build_layers((2, 7, 7), [ir.LayerDecl("maxpool", LAYERS["maxpool"].bind([2], {"padding": "same"})[0])])
    assert layer[0].out_shape == (2, 4, 4)


def test_channel_dropout_drops_whole_maps():
    op, _, _ = make_op("dropout", (6, 3, 3), rate=0.5, channels=True)
    x = np.ones((50, 6, 3, 3))
    y = op.forward(x, {}, True, np.random.default_rng(0))
    per_map = y.reshape(50, 6, 9)
    assert np.all(per_map.min(axis=2) == per_map.max(axis=2))  # each map all kept or all dropped
    assert set(np.unique(per_map)) == {0.0, 2.0}
    assert 0.35 < np.mean(per_map[:, :, 0] == 0) < 0.65
    assert op.forward(x, {}, False, None) is x  # identity at evaluation


def test_channel_dropout_on_vectors_refused():
    from dnnspec import frontend

    src = "input [8]\nclasses 2\nlayers {\n  dense 4\n  dropout 0.3 channels=true\n  dense 2\n  softmax\n}\n"
    with pytest.raises(SpecError, match="channels=true") as err:
        frontend.parse(src, "t.dnn")
    assert "t.dnn:5" in str(err.value)


def test_selu_defaults_the_layer_before_to_lecun_normal():
    layers = ir.build_layers((5,), [ir.LayerDecl("dense", LAYERS["dense"].bind([4], {})[0]),
                                    ir.LayerDecl("selu", LAYERS["selu"].bind([], {})[0])])
    kernel = layers[0].params[0]
    assert (kernel.init, kernel.fan) == ("lecun_normal", "in")


def test_grouped_dilated_conv_matches_a_direct_sum():
    """y[n, f, r, s] = b[f] + sum over group g(f)'s channels and taps of k * xp[.., r*sh + dh*i, s*sw + dw*j]."""
    op, params, layer = make_op("conv2d", (4, 9, 8), filters=6, groups=2, kernel=[3, 2], dilation=[2, 3],
                                stride=[2, 1], padding="same")
    x = np.random.default_rng(3).normal(size=(2, 4, 9, 8))
    y = op.forward(x, params, False, None)
    k, b = params["conv1.kernel"], params["conv1.bias"]
    t, left, _, _ = op.pads
    xp = np.zeros((2, 4, 9 + op.pads[0] + op.pads[2], 8 + op.pads[1] + op.pads[3]))
    xp[:, :, t:t + 9, left:left + 8] = x
    want = np.zeros_like(y)
    for f in range(6):
        chans = range(2 * (f // 3), 2 * (f // 3) + 2)
        for r in range(y.shape[2]):
            for s_ in range(y.shape[3]):
                want[:, f, r, s_] = b[f] + sum(k[f, ci % 2, i, j] * xp[:, ci, 2 * r + 2 * i, s_ + 3 * j]
                                               for ci in chans for i in range(3) for j in range(2))
    np.testing.assert_allclose(y, want, atol=1e-12)
    assert layer.out_shape == (6, 5, 8) and params["conv1.kernel"].shape == (6, 2, 3, 2)


def test_groups_must_divide_channels_and_filters():
    from dnnspec import frontend

    src = "input image[4, 8, 8]\nclasses 3\nlayers {\n  conv2d 6 groups=4\n  flatten\n  dense 3\n  softmax\n}\n"
    with pytest.raises(SpecError, match="groups=4 must divide the input channels") as err:
        frontend.parse(src, "t.dnn")
    assert "t.dnn:4" in str(err.value)


def test_dilation_too_large_names_the_dilation():
    from dnnspec import frontend

    src = "input image[1, 6, 6]\nclasses 3\nlayers {\n  conv2d 2 dilation=3\n  flatten\n  dense 3\n  softmax\n}\n"
    with pytest.raises(SpecError, match="kernel 3x3 with dilation 3x3 spans 7x7, too large") as err:
        frontend.parse(src, "t.dnn")
    assert "t.dnn:4:" in str(err.value)


def test_general_conv_refuses_the_pool_hand_over():
    """A dilated or grouped conv before a tiling maxpool keeps NCHW (no window-major fusion), same values."""
    from dnnspec.engine.net import Net

    layers = [("conv2d", {"filters": 4, "groups": 2, "padding": "same"}), ("maxpool", {"kernel": 2}),
              ("flatten", {}), ("dense", {"units": 3}), ("softmax", {})]
    model = ir.model_from_layers((2, 8, 8), layers, loss="cross_entropy")
    net = Net(model, dtype=F64)
    conv_op = next(op for op in net.run_body if op.layer.kind == "conv2d")
    assert conv_op.layout == "general" and conv_op.pool is None
    x, y = np.random.default_rng(0).normal(size=(3, 2, 8, 8)), np.array([0, 1, 2])
    from gradcheck import net_gradients

    for name, (analytic, numeric) in net_gradients(net, x, y, ["conv1.kernel", "conv1.bias"]).items():
        assert rel_error(analytic, numeric) < 1e-6, name


# --- export parity ------------------------------------------------------------------------

ort = pytest.importorskip("onnxruntime")

D = ("dense", {"units": 8})
HEAD = [("dense", {"units": 4}), ("softmax", {})]
IMG = (2, 9, 9)
PARITY = {
    "gelu": ((12,), [D, ("gelu", {}), *HEAD], "Gemm Gelu Gemm Softmax"),
    "silu": ((12,), [D, ("silu", {}), *HEAD], "Gemm Sigmoid Mul Gemm Softmax"),
    "selu": ((12,), [D, ("selu", {}), *HEAD], "Gemm Selu Gemm Softmax"),
    "layernorm_dense": ((12,), [D, ("layernorm", {}), ("relu", {}), *HEAD],
                        "Gemm LayerNormalization Relu Gemm Softmax"),
    "layernorm_after_conv": (IMG, [("conv2d", {"filters": 3, "stride": 2, "padding": "same"}), ("layernorm", {}),
                                   ("gelu", {}), ("flatten", {}), *HEAD],
                             "Conv LayerNormalization Gelu Flatten Gemm Softmax"),
    "global_maxpool": (IMG, [("conv2d", {"filters": 3}), ("silu", {}), ("global_maxpool", {}), *HEAD],
                       "Conv Sigmoid Mul GlobalMaxPool Flatten Gemm Softmax"),
    "pools_same": (IMG, [("conv2d", {"filters": 3}), ("relu", {}), ("maxpool", {"kernel": 2, "padding": "same"}),
                         ("avgpool", {"kernel": 3, "stride": 2, "padding": "same"}), ("flatten", {}), *HEAD],
                   "Conv Relu MaxPool AveragePool Flatten Gemm Softmax"),
    "dilated_conv": (IMG, [("conv2d", {"filters": 3, "dilation": 2, "stride": 2, "padding": "same"}), ("relu", {}),
                           ("flatten", {}), *HEAD], "Conv Relu Flatten Gemm Softmax"),
    "depthwise_conv_bn": ((3, 9, 9), [("conv2d", {"filters": 3, "groups": 3, "stride": 2, "padding": 1}),
                                      ("batchnorm", {}), ("relu", {}),
                                      ("conv2d", {"filters": 6, "groups": 3, "dilation": [1, 2], "kernel": 2}),
                                      ("layernorm", {}), ("flatten", {}), *HEAD],
                          "Conv Relu Conv LayerNormalization Flatten Gemm Softmax"),
    "channel_dropout": (IMG, [("conv2d", {"filters": 3}), ("relu", {}), ("dropout", {"rate": 0.3, "channels": True}),
                              ("global_avgpool", {}), *HEAD], "Conv Relu GlobalAveragePool Flatten Gemm Softmax"),
}


def _net(in_shape, layers):
    from test_export import trained_net

    return trained_net(ir.model_from_layers(in_shape, layers, loss="cross_entropy"))


@pytest.mark.parametrize("case", sorted(PARITY))
def test_export_parity(case):
    from test_export import assert_parity, ops

    from dnnspec.export.onnx_export import to_onnx

    in_shape, layers, expected = PARITY[case]
    net = _net(in_shape, layers)
    proto = to_onnx(net.model, net.params)
    assert " ".join(ops(proto)) == expected
    assert_parity(net, proto)


@pytest.mark.parametrize("case", ["gelu", "layernorm_dense", "layernorm_after_conv"])
def test_export_parity_decomposed_at_opset_13(case):
    """Below opset 20 (Gelu) and 17 (LayerNormalization) the converters write the formulas out."""
    from test_export import assert_parity, ops

    from dnnspec.export.onnx_export import to_onnx

    in_shape, layers, _ = PARITY[case]
    net = _net(in_shape, layers)
    proto = to_onnx(net.model, net.params, opset=13)
    assert not {"Gelu", "LayerNormalization"} & set(ops(proto))
    assert_parity(net, proto)


def test_registry_documents_new_kinds():
    for kind in ("gelu", "silu", "selu", "layernorm", "global_maxpool"):
        assert kind in registry.KINDS and LAYERS[kind].doc


# --- label smoothing and amsgrad ------------------------------------------------------------


def test_label_smoothing_loss_and_gradient():
    from dnnspec.engine.losses import softmax_cross_entropy

    rng = np.random.default_rng(0)
    z, y, e = rng.normal(0, 3, (6, 5)), rng.integers(0, 5, 6), 0.2
    q = (1 - e) * np.eye(5)[y] + e / 5
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss, d = softmax_cross_entropy(z.copy(), y, label_smoothing=e)
    assert loss == pytest.approx(float(np.mean(-(q * logp).sum(axis=1))), rel=1e-12)
    num = numeric_grad(lambda: softmax_cross_entropy(z, y, grad=False, label_smoothing=e)[0], z)
    assert rel_error(d, num) < 1e-6
    plain, dp = softmax_cross_entropy(z.copy(), y)
    zero, dz = softmax_cross_entropy(z.copy(), y, label_smoothing=0.0)
    assert plain == zero and np.array_equal(dp, dz)


def test_label_smoothing_reaches_the_net_from_the_spec():
    from dnnspec import frontend
    from dnnspec.engine.net import Net

    src = ("input [4]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n"
           "loss cross_entropy label_smoothing=0.3\n")
    model = frontend.parse(src, "t.dnn")
    assert model.loss.options["label_smoothing"] == 0.3
    net = Net(model, dtype=np.float64)
    x, y = np.random.default_rng(0).normal(size=(5, 4)), np.array([0, 1, 2, 0, 1])
    got = net.loss_and_grads(x, y)[0]
    z = net.forward(x, training=False)  # softmax probabilities
    q = 0.7 * np.eye(3)[y] + 0.1
    assert got == pytest.approx(float(np.mean(-(q * np.log(z)).sum(axis=1))), rel=1e-9)
    with pytest.raises(SpecError, match="label_smoothing"):
        frontend.parse(src.replace("0.3", "1.0"), "t.dnn")


def ref_amsgrad(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Plain floats, straight from Reddi et al. with our bias correction: vmax of the raw s."""
    m = s = v = 0.0
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        v = max(v, s)
        w = w - lr * (m / (1 - b1 ** t)) / math.sqrt(v / (1 - b2 ** t) + eps)
    return w


def test_amsgrad_matches_reference_and_keeps_max():
    from dnnspec.engine.optim import Adam

    grads = [3.0, 0.1, 0.1, -2.0, 0.05]
    p = {"w": np.array([0.5])}
    opt = Adam(p, lr=0.1, amsgrad=True, fused=False)
    for g in grads:
        opt.step(p, {"w": np.array([g])})
    assert p["w"][0] == pytest.approx(ref_amsgrad(0.5, grads, 0.1), rel=1e-10)
    assert opt.state["v"]["w"][0] >= opt.state["s"]["w"][0] > 0
    q = {"w": np.array([0.5])}
    plain = Adam(q, lr=0.1, fused=False)
    for g in grads:
        plain.step(q, {"w": np.array([g])})
    assert q["w"][0] != p["w"][0]  # the running maximum changes the steps after the large gradient


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
@pytest.mark.parametrize("decay", ["l2", "decoupled"])
def test_amsgrad_fused_is_bit_identical(decay):
    from dnnspec.engine.optim import Adam

    rng = np.random.default_rng(0)
    w0 = {"a.kernel": rng.normal(size=(40, 30)).astype(np.float32), "a.bias": rng.normal(size=30).astype(np.float32)}
    gs = [{k: rng.normal(0, 10 ** rng.uniform(-3, 1), v.shape).astype(np.float32) for k, v in w0.items()}
          for _ in range(12)]
    out = []
    for fused in (False, True):
        p = {k: v.copy() for k, v in w0.items()}
        opt = Adam(p, lr=0.01, amsgrad=True, weight_decay=0.01, decay_mode=decay, fused=fused)
        assert opt.fused == fused
        for g in gs:
            opt.step(p, g)
        out.append((p, opt.state_dict()))
    (p0, s0), (p1, s1) = out
    for k in p0:
        assert np.array_equal(p0[k], p1[k]), k
    for k in s0:
        assert np.array_equal(s0[k], s1[k]), k


def test_amsgrad_from_the_spec():
    from dnnspec import frontend
    from dnnspec.engine.optim import make_optimizer

    src = "input [4]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\noptimizer adam lr=0.01 amsgrad=true\n"
    opt = make_optimizer(frontend.parse(src, "t.dnn").optimizer, {"w": np.zeros(3, np.float32)})
    assert opt.amsgrad and opt.slots == ("m", "s", "v")


# --- multi-label: targets N with sigmoid and binary_cross_entropy ----------------------------

MULTI = "input [6]\ntargets 3\nlayers {\n  dense 8\n  relu\n  dense 3\n  sigmoid\n}\nloss binary_cross_entropy\n"


def test_multilabel_spec_trains_with_per_value_bce():
    from gradcheck import net_gradients

    from dnnspec import frontend
    from dnnspec.engine.net import Net

    net = Net(frontend.parse(MULTI, "t.dnn"), dtype=F64)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 6)), (rng.random((5, 3)) > 0.5).astype(float)
    p = net.forward(x, training=False)
    want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert net.loss_and_grads(x, y)[0] == pytest.approx(want, rel=1e-10)
    for name, (analytic, numeric) in net_gradients(net, x, y, ["dense1.kernel", "dense2.bias"]).items():
        assert rel_error(analytic, numeric) < 1e-6, name


def test_multilabel_output_width_and_loss_checked():
    from dnnspec import frontend

    with pytest.raises(SpecError, match=r"outputs 2 values, but targets is 3 \(one sigmoid output per yes/no"):
        frontend.parse(MULTI.replace("dense 3", "dense 2"), "t.dnn")
    with pytest.raises(SpecError, match="binary_cross_entropy needs the network to end with sigmoid"):
        frontend.parse(MULTI.replace("  sigmoid\n", ""), "t.dnn")
    with pytest.raises(SpecError, match="cross_entropy is a classification loss"):
        frontend.parse(MULTI.replace("binary_cross_entropy", "cross_entropy").replace("sigmoid", "softmax"), "t.dnn")


def test_multilabel_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from dnnspec.report import multilabel_metrics

    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) > 0.6).astype(float)
    p = np.clip(y * 0.6 + rng.random((200, 4)) * 0.5, 0, 1)
    m = multilabel_metrics(p, y)
    pred = (p > 0.5).astype(int)
    per = m["per_label"]
    np.testing.assert_allclose(per["f1"], f1_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(per["precision"], precision_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(per["recall"], recall_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(per["accuracy"], (pred == y).mean(axis=0))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["micro_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_multilabel_report_from_net_and_onnx(tmp_path):
    import dnnspec
    from dnnspec import frontend
    from dnnspec.engine.net import Net
    from dnnspec.errors import DataError
    from dnnspec.export.onnx_export import export

    net = Net(frontend.parse(MULTI, "t.dnn"))
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), (rng.random((40, 3)) > 0.5).astype(np.float32)
    for _ in range(3):  # a few steps, so that the outputs are not the initial ones
        _, grads = net.loss_and_grads(x, y)
        for k, g in grads.items():
            net.params[k] -= 0.1 * g
    r_net = dnnspec.evaluate(net, x, y=y)
    assert r_net.task == "multilabel" and len(r_net.to_dict()["per_label"]) == 3
    text = r_net.render()
    assert "subset accuracy" in text and "f1-score" in text
    path = tmp_path / "m.onnx"
    export(net, path)
    r_onnx = dnnspec.evaluate(str(path), x, y=y)
    assert r_onnx.task == "multilabel"
    assert r_onnx["accuracy"] == r_net["accuracy"] and r_onnx["loss"] == pytest.approx(r_net["loss"], abs=1e-5)
    with pytest.raises(DataError, match="is not 0 or 1"):
        dnnspec.evaluate(net, x, y=y * 0.5)
