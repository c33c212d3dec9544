"""conv2d, maxpool, avgpool and global_avgpool: forward against naive loops, scipy and
onnxruntime; backward against float64 finite differences (tests/gradcheck.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import net_gradients, numeric_grad, rel_error

from dnnspec import ir
from dnnspec.engine import conv  # noqa: F401  (registers the ops)
from dnnspec.engine.base import OPS, compile_op

# --- building single-layer ops ------------------------------------------------------------


def make_op(kind: str, in_shape, dtype=np.float64, **opts):
    """The engine op of one IR layer of ``kind`` built by ir.model_from_layers."""
    layer = ir.model_from_layers(tuple(in_shape), [(kind, opts)]).layers[0]
    return compile_op(layer, dtype), layer


def conv_params(layer, rng, dtype=np.float64):
    """Random kernel (and bias) for a conv2d layer, keyed by full parameter names."""
    return {p.name: rng.standard_normal(p.shape).astype(dtype) for p in layer.params}


# --- independent references ---------------------------------------------------------------


def ref_pads(size: int, k: int, s: int, padding) -> tuple[int, int]:
    """Pads (before, after) along one axis, written out from the ONNX definitions."""
    if padding == "valid":
        return 0, 0
    if padding == "same":  # SAME_UPPER: out = ceil(size / s), extra pixel at the end
        out = (size + s - 1) // s
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def ref_geometry(x_shape, kernel, stride, padding):
    """(pads_h, pads_w, OH, OW) for padding given as 'same'/'valid'/int/(ph, pw)."""
    _, _, h, w = x_shape
    ph, pw = (padding, padding) if isinstance(padding, (str, int)) else padding
    pads_h = ref_pads(h, kernel[0], stride[0], ph)
    pads_w = ref_pads(w, kernel[1], stride[1], pw)
    oh = (h + sum(pads_h) - kernel[0]) // stride[0] + 1
    ow = (w + sum(pads_w) - kernel[1]) // stride[1] + 1
    return pads_h, pads_w, oh, ow


def naive_windows(x, kernel, stride, padding, fill):
    """Yield (r, s, patch (N, C, kh, kw)) for every output pixel, by plain loops."""
    pads_h, pads_w, oh, ow = ref_geometry(x.shape, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), pads_h, pads_w), constant_values=fill)
    for r in range(oh):
        for s in range(ow):
            r0, s0 = r * stride[0], s * stride[1]
            yield r, s, xp[:, :, r0:r0 + kernel[0], s0:s0 + kernel[1]]


def naive_conv(x, k, b, stride, padding):
    _, _, oh, ow = ref_geometry(x.shape, k.shape[2:], stride, padding)
    y = np.zeros((x.shape[0], k.shape[0], oh, ow))
    for r, s, patch in naive_windows(x, k.shape[2:], stride, padding, 0.0):
        y[:, :, r, s] = np.einsum("nchw,fchw->nf", patch, k)
    return y if b is None else y + b[None, :, None, None]


def naive_maxpool(x, kernel, stride, padding, dy):
    """y and dx, the gradient routed to the first max of each window (row-major)."""
    pads_h, pads_w, oh, ow = ref_geometry(x.shape, kernel, stride, padding)
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow))
    dxp = np.zeros((n, c, h + sum(pads_h), w + sum(pads_w)))
    for r, s, patch in naive_windows(x, kernel, stride, padding, -np.inf):
        flat = patch.reshape(n, c, -1)
        arg = flat.argmax(axis=2)  # np.argmax: first occurrence
        y[:, :, r, s] = flat.max(axis=2)
        for ni in range(n):
            for ci in range(c):
                i, j = divmod(int(arg[ni, ci]), kernel[1])
                dxp[ni, ci, r * stride[0] + i, s * stride[1] + j] += dy[ni, ci, r, s]
    return y, dxp[:, :, pads_h[0]:pads_h[0] + h, pads_w[0]:pads_w[0] + w]


def naive_avgpool(x, kernel, stride, padding):
    """Mean over the real pixels of each window (count_include_pad = 0)."""
    _, _, oh, ow = ref_geometry(x.shape, kernel, stride, padding)
    y = np.zeros((x.shape[0], x.shape[1], oh, ow))
    real = np.ones((1, 1) + x.shape[2:])
    for (r, s, patch), (_, _, ones) in zip(naive_windows(x, kernel, stride, padding, 0.0),
                                           naive_windows(real, kernel, stride, padding, 0.0)):
        y[:, :, r, s] = patch.sum(axis=(2, 3)) / ones.sum()
    return y


# --- gradient-check helper ----------------------------------------------------------------


def check_grads(op, x, params, rng, tol=1e-6, h=1e-3):
    """Compare op.backward with centred differences of L = sum(forward(x) * g) in float64.

    Every op here is (piecewise) linear in each input, so a centred difference is exact
    within a linear piece up to rounding; h = 1e-3 keeps the rounding error (~eps*|L|/h)
    far below the tolerance, and max pooling inputs are kept >= 1e-2 apart so that
    +-h never changes which element is the maximum.
    """
    y = op.forward(x, params, True, None)
    g = rng.standard_normal(y.shape)

    def loss() -> float:
        return float(np.sum(op.forward(x, params, True, None) * g))

    grads: dict[str, np.ndarray] = {}
    op.forward(x, params, True, None)
    dx = op.backward(g, params, grads)
    assert dx.shape == x.shape
    assert rel_error(dx, numeric_grad(loss, x, h)) < tol
    for name, value in params.items():
        assert grads[name].shape == value.shape
        assert rel_error(grads[name], numeric_grad(loss, value, h)) < tol
    assert set(grads) == set(params)


def distinct(rng, shape, gap=1e-2):
    """Random values at least ``gap`` apart (no ties: max pooling is differentiable there)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap - n * gap / 2).reshape(shape).astype(np.float64)


# --- conv2d -------------------------------------------------------------------------------

CONV_CASES = [
    # in_shape, filters, kernel, stride, padding, bias
    ((3, 7, 6), 4, (3, 3), (1, 1), "valid", True),
    ((3, 7, 6), 4, (3, 3), (1, 1), "same", True),      # same on odd H, even W
    ((2, 8, 8), 3, (4, 4), (1, 1), "same", False),     # even kernel: SAME_UPPER is asymmetric
    ((3, 7, 6), 4, (3, 2), (2, 2), "same", True),      # non-square kernel, stride 2, odd/even
    ((2, 9, 7), 3, (2, 3), (2, 1), (1, 1), False),     # numeric padding, mixed strides
    ((2, 9, 8), 2, (5, 3), (3, 2), (2, 1), True),      # [h, w] padding, floor on sizes
    ((4, 5, 5), 3, (1, 1), (1, 1), "valid", True),     # 1x1 fast path
    ((2, 6, 6), 3, (1, 1), (2, 2), "valid", False),    # 1x1 with stride
]


def conv_op(case, dtype=np.float64, layout=None):
    """The conv2d op of a case; ``layout`` ("unfold" or "rows") overrides the op's choice by K."""
    in_shape, filters, kernel, stride, padding, bias = case
    pad = list(padding) if isinstance(padding, tuple) else padding
    op, layer = make_op("conv2d", in_shape, dtype, filters=filters, kernel=list(kernel), stride=list(stride),
                        padding=pad, bias=bias)
    if layout is not None:
        op.layout = layout
    return op, layer


LAYOUTS = ["unfold", "rows"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_matches_naive_loops(case, layout):
    rng = np.random.default_rng(1)
    op, layer = conv_op(case, layout=layout)
    params = conv_params(layer, rng)
    x = rng.standard_normal((3,) + case[0])
    y = op.forward(x, params, False, None)
    ref = naive_conv(x, params["conv1.kernel"], params.get("conv1.bias"), case[3], case[4])
    assert y.shape == ref.shape == (3,) + layer.out_shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients_match_finite_differences(case, layout):
    rng = np.random.default_rng(2)
    op, layer = conv_op(case, layout=layout)
    check_grads(op, rng.standard_normal((2,) + case[0]), conv_params(layer, rng), rng)


def test_conv_matches_scipy_correlate():
    from scipy.signal import correlate

    rng = np.random.default_rng(3)
    op, layer = make_op("conv2d", (3, 10, 9), filters=2, kernel=[3, 4], padding="valid")
    params = conv_params(layer, rng)
    x = rng.standard_normal((2, 3, 10, 9))
    y = op.forward(x, params, False, None)
    k, b = params["conv1.kernel"], params["conv1.bias"]
    for n in range(2):
        for f in range(2):
            ref = correlate(x[n], k[f], mode="valid")[0] + b[f]
            np.testing.assert_allclose(y[n, f], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_float32_default_and_need_dx_false(layout):
    rng = np.random.default_rng(4)
    case = ((3, 8, 8), 5, (3, 3), (1, 1), "same", True)
    op32, layer = conv_op(case, np.float32, layout)
    op64, _ = conv_op(case, layout=layout)
    params = conv_params(layer, rng)
    x = rng.standard_normal((4, 3, 8, 8))
    y32 = op32.forward(x.astype(np.float32), {k: v.astype(np.float32) for k, v in params.items()}, True, None)
    y64 = op64.forward(x, params, True, None)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal(y64.shape)
    g64: dict[str, np.ndarray] = {}
    op64.backward(dy, params, g64)
    op32.need_dx = False
    g32: dict[str, np.ndarray] = {}
    assert op32.backward(dy.astype(np.float32), params, g32) is None
    for name in params:
        assert g32[name].dtype == np.float32
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_reused_buffers_stay_correct_across_batch_sizes(layout):
    """Buffers are reused while the batch shape repeats: alternate sizes, compare each time."""
    rng = np.random.default_rng(5)
    op, layer = conv_op(((2, 6, 6), 3, (3, 3), (2, 1), "same", True), layout=layout)
    params = conv_params(layer, rng)
    k, b = params["conv1.kernel"], params["conv1.bias"]
    for n in (4, 3, 4, 4, 1):
        x = rng.standard_normal((n, 2, 6, 6))
        y = op.forward(x, params, True, None)
        assert y.flags.c_contiguous
        np.testing.assert_allclose(y, naive_conv(x, k, b, (2, 1), "same"), rtol=1e-12, atol=1e-12)
        grads: dict[str, np.ndarray] = {}
        dx = op.backward(np.ones_like(y), params, grads)
        # d(sum y)/db = number of outputs per filter; d(sum y)/dx = sum of kernel taps reaching x
        np.testing.assert_allclose(grads["conv1.bias"], np.full(3, y[:, 0].size))
        (top, bottom), (left, right), _, _ = ref_geometry(x.shape, (3, 3), (2, 1), "same")
        ones_grad_p = np.zeros((n, 2, 6 + top + bottom, 6 + left + right))
        for r, s, _ in naive_windows(x, (3, 3), (2, 1), "same", 0.0):
            ones_grad_p[:, :, 2 * r:2 * r + 3, s:s + 3] += k.sum(axis=0)
        ones_grad = ones_grad_p[:, :, top:top + 6, left:left + 6]
        np.testing.assert_allclose(dx, ones_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_accepts_nchw_contiguous_and_nhwc_memory(layout):
    rng = np.random.default_rng(6)
    op, layer = conv_op(((3, 5, 5), 2, (3, 3), (1, 1), "valid", True), layout=layout)
    params = conv_params(layer, rng)
    x = rng.standard_normal((2, 3, 5, 5))
    x_nhwc_memory = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(op.forward(x, params, False, None),
                                  op.forward(x_nhwc_memory, params, False, None))


def test_conv_rejects_wrong_input_shape_naming_the_layer():
    op, layer = conv_op(((3, 5, 5), 2, (3, 3), (1, 1), "valid", True))
    with pytest.raises(ValueError, match="conv1"):
        op.forward(np.zeros((2, 4, 5, 5)), conv_params(layer, np.random.default_rng(0)), False, None)


# --- max pooling --------------------------------------------------------------------------

POOL_CASES = [
    # in_shape, kernel, stride, padding
    ((2, 6, 6), (2, 2), (2, 2), (0, 0)),     # the usual 2x2/2
    ((2, 7, 5), (2, 2), (2, 2), (0, 0)),     # non-divisible: floor, last row/col unused
    ((2, 7, 7), (3, 3), (2, 2), (0, 0)),     # overlapping windows (stride < kernel)
    ((2, 6, 5), (3, 3), (1, 1), (1, 1)),     # padding 1, heavy overlap
    ((1, 7, 8), (2, 3), (1, 2), (1, 1)),     # non-square, mixed strides, padding
]


def pool_op(kind, case, dtype=np.float64):
    in_shape, kernel, stride, padding = case
    return make_op(kind, in_shape, dtype, kernel=list(kernel), stride=list(stride), padding=list(padding))


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_forward_and_routing_match_naive(case):
    rng = np.random.default_rng(7)
    op, layer = pool_op("maxpool", case)
    x = rng.standard_normal((3,) + case[0])
    y = op.forward(x, {}, True, None)
    dy = rng.standard_normal(y.shape)
    ref_y, ref_dx = naive_maxpool(x, case[1], case[2], case[3], dy)
    assert y.shape == (3,) + layer.out_shape
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(op.backward(dy, {}, {}), ref_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_gradients_match_finite_differences(case):
    rng = np.random.default_rng(8)
    op, _ = pool_op("maxpool", case)
    check_grads(op, distinct(rng, (2,) + case[0]), {}, rng)


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_exact_ties_route_to_first_max_once(case):
    """Integer inputs from {0, 1} (and all-equal inputs) tie in almost every window."""
    rng = np.random.default_rng(9)
    op, _ = pool_op("maxpool", case)
    for x in (rng.integers(0, 2, (3,) + case[0]).astype(np.float64), np.full((2,) + case[0], 0.5)):
        y = op.forward(x, {}, True, None)
        dy = rng.standard_normal(y.shape)
        dx = op.backward(dy, {}, {})
        ref_y, ref_dx = naive_maxpool(x, case[1], case[2], case[3], dy)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
        # one max per window: the gradient's total is conserved exactly once
        np.testing.assert_allclose(dx.sum(axis=(2, 3)), dy.sum(axis=(2, 3)), rtol=1e-10)


def test_maxpool_tie_example_by_hand():
    op, _ = make_op("maxpool", (1, 2, 4), kernel=2)
    x = np.array([[[[1.0, 3.0, 2.0, 2.0],
                    [3.0, 0.0, 2.0, 2.0]]]])
    y = op.forward(x, {}, True, None)
    np.testing.assert_array_equal(y, [[[[3.0, 2.0]]]])
    dx = op.backward(np.array([[[[10.0, 20.0]]]]), {}, {})
    np.testing.assert_array_equal(dx, [[[[0.0, 10.0, 20.0, 0.0],
                                         [0.0, 0.0, 0.0, 0.0]]]])


# --- average pooling ----------------------------------------------------------------------


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_forward_matches_naive(case):
    rng = np.random.default_rng(10)
    op, layer = pool_op("avgpool", case)
    x = rng.standard_normal((3,) + case[0])
    y = op.forward(x, {}, True, None)
    assert y.shape == (3,) + layer.out_shape
    np.testing.assert_allclose(y, naive_avgpool(x, case[1], case[2], case[3]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_gradients_match_finite_differences(case):
    rng = np.random.default_rng(11)
    op, _ = pool_op("avgpool", case)
    check_grads(op, rng.standard_normal((2,) + case[0]), {}, rng)


def test_avgpool_padding_not_counted_by_hand():
    op, _ = make_op("avgpool", (1, 2, 2), kernel=2, stride=1, padding=1)
    y = op.forward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), {}, False, None)
    np.testing.assert_allclose(y[0, 0], [[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]])


# --- global average pooling ---------------------------------------------------------------


def test_global_avgpool_forward_and_gradients():
    rng = np.random.default_rng(12)
    op, layer = make_op("global_avgpool", (3, 5, 4))
    assert layer.out_shape == (3,)
    x = rng.standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(op.forward(x, {}, False, None), x.mean(axis=(2, 3)), rtol=1e-12)
    check_grads(op, x, {}, rng)


def test_pools_float32_and_need_dx_false():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    for kind in ("maxpool", "avgpool", "global_avgpool"):
        opts = {} if kind == "global_avgpool" else {"kernel": 2}
        op, _ = make_op(kind, (3, 6, 6), np.float32, **opts)
        y = op.forward(x, {}, True, None)
        assert y.dtype == np.float32
        assert op.backward(np.ones_like(y), {}, {}).dtype == np.float32
        op.need_dx = False
        op.forward(x, {}, True, None)
        assert op.backward(np.ones_like(y), {}, {}) is None


def test_registered_kinds():
    for kind in ("conv2d", "maxpool", "avgpool", "global_avgpool"):
        assert kind in OPS


# --- onnxruntime as a reference for the ONNX conventions ----------------------------------


def run_onnx_node(op_type: str, x: np.ndarray, inits: dict[str, np.ndarray], **attrs) -> np.ndarray:
    """Run a single ONNX node on x (float32) with onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op_type, ["x", *inits], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[5]])
def test_conv_same_and_pads_match_onnxruntime(case):
    rng = np.random.default_rng(14)
    op, layer = conv_op(case, np.float32)
    params = conv_params(layer, rng, np.float32)
    x = rng.standard_normal((2,) + case[0]).astype(np.float32)
    in_shape, _, kernel, stride, padding, _ = case
    attrs = {"auto_pad": "SAME_UPPER"} if padding == "same" else {
        "pads": [0, 0, 0, 0] if padding == "valid" else [padding[0], padding[1], padding[0], padding[1]]}
    ref = run_onnx_node("Conv", x, {"w": params["conv1.kernel"], "b": params["conv1.bias"]},
                        kernel_shape=list(kernel), strides=list(stride), **attrs)
    np.testing.assert_allclose(op.forward(x, params, False, None), ref, atol=1e-5)


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools_match_onnxruntime(case):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2,) + case[0]).astype(np.float32)
    _, kernel, stride, padding = case
    pads = [padding[0], padding[1], padding[0], padding[1]]
    for kind, onnx_op, extra in (("maxpool", "MaxPool", {}), ("avgpool", "AveragePool", {"count_include_pad": 0})):
        op, _ = pool_op(kind, case, np.float32)
        ref = run_onnx_node(onnx_op, x, {}, kernel_shape=list(kernel), strides=list(stride), pads=pads, **extra)
        np.testing.assert_allclose(op.forward(x, {}, False, None), ref, atol=1e-5)


# --- the Winograd path: 3x3 stride-1 "rows" convolutions in training, with numba ------------

needs_winograd = pytest.mark.skipif(conv.winograd_kernels() is None,
                                    reason="the Winograd transforms need numba (the fast extra)")

WINOGRAD_CASES = [
    # in_shape, filters, padding, bias
    ((4, 7, 6), 5, "same", True),     # odd and even sizes: partial tiles
    ((5, 9, 10), 3, "valid", False),  # the input gradient's grid has more tiles than the output's
    ((6, 4, 5), 4, 2, True),          # padding 2: more output tiles than input tiles
    ((8, 12, 12), 6, "same", False),  # whole tiles
    ((6, 3, 3), 2, 1, True),          # smaller than one tile
]


def winograd_op(case, dtype=np.float64):
    in_shape, filters, padding, bias = case
    op, layer = make_op("conv2d", in_shape, dtype, filters=filters, kernel=3, padding=padding, bias=bias)
    assert op.layout == "rows" and op.winograd
    return op, layer


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_forward_matches_naive_loops_and_gradients_finite_differences(case):
    rng = np.random.default_rng(20)
    op, layer = winograd_op(case)
    params = conv_params(layer, rng)
    x = rng.standard_normal((3,) + case[0])
    y = op.forward(x, params, True, None)
    assert op._saved[0] == "winograd"
    ref = naive_conv(x, params["conv1.kernel"], params.get("conv1.bias"), (1, 1), case[2])
    np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-11)
    check_grads(op, x, params, rng)  # float64 finite differences through the tiles


@needs_winograd
@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_float32_agrees_with_the_plain_path(case, monkeypatch):
    """The float32 tiles round differently from one 9*C-tap product, and no more than that."""
    rng = np.random.default_rng(21)
    results = []
    for use in (True, False):
        monkeypatch.setattr(conv.Conv2D, "use_winograd", use)
        op, layer = winograd_op(case, np.float32)
        params = {k: v.astype(np.float32) for k, v in conv_params(layer, np.random.default_rng(22)).items()}
        x = rng.standard_normal((5,) + case[0]).astype(np.float32) if not results else results[0][0]
        y = op.forward(x, params, True, None).copy()
        assert (op._saved[0] == "winograd") == use
        dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
        grads: dict[str, np.ndarray] = {}
        dx = op.backward(dy, params, grads).copy()
        results.append((x, y, dx, grads))
    (_, y0, dx0, g0), (_, y1, dx1, g1) = results
    for got, want in [(y0, y1), (dx0, dx1)] + [(g0[k], g1[k]) for k in g1]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@needs_winograd
def test_winograd_runs_groups_and_numpy_products_agree(monkeypatch):
    """One run per example in three groups, and the NumPy-matmul products (a BLAS without ILP64
    cblas), give what two runs and the direct BLAS calls give, to rounding; need_dx False skips dx."""
    rng = np.random.default_rng(23)
    case = ((6, 10, 9), 4, "same", True)
    x = rng.standard_normal((7,) + case[0])
    dy = rng.standard_normal((7, 4, 10, 9))
    outs = []
    for runs_bytes, groups, direct in ((1 << 19, 2, True), (1, 3, True), (1, 3, False)):
        monkeypatch.setattr(conv.Conv2D, "WINOGRAD_RUN_BYTES", runs_bytes)
        monkeypatch.setattr(conv.threads, "pieces", lambda groups=groups: groups)
        if not direct:
            monkeypatch.setattr(conv, "_direct_gemm", lambda dtype: (0, None))
        op, layer = winograd_op(case)
        params = conv_params(layer, np.random.default_rng(24))
        y = op.forward(x, params, True, None).copy()
        grads: dict[str, np.ndarray] = {}
        dx = op.backward(dy, params, grads).copy()
        op.need_dx = False
        op.forward(x, params, True, None)
        only: dict[str, np.ndarray] = {}
        assert op.backward(dy, params, only) is None
        for k in grads:
            np.testing.assert_array_equal(only[k], grads[k])
        outs.append((y, dx, grads))
    for y, dx, grads in outs[1:]:
        np.testing.assert_allclose(y, outs[0][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, outs[0][1], rtol=1e-12, atol=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads[k], outs[0][2][k], rtol=1e-12, atol=1e-12)


def test_winograd_only_in_training_and_not_with_fused_off(monkeypatch):
    """Evaluation (and so export parity and serving) keeps the plain product; $DNNSPEC_FUSED=0 too."""
    rng = np.random.default_rng(25)
    op, layer = winograd_op(((4, 6, 6), 3, "same", True))
    params = conv_params(layer, rng)
    x = rng.standard_normal((2, 4, 6, 6))
    op.forward(x, params, False, None)
    assert op._saved[0] != "winograd"
    monkeypatch.setenv("DNNSPEC_FUSED", "0")
    op.forward(x, params, True, None)
    assert op._saved[0] != "winograd"
    for other in ({"stride": 2}, {"kernel": 5}, {"dilation": 2}, {"padding": 3}):
        opts = {"filters": 3, "kernel": 3, "padding": "same", **other}
        assert not make_op("conv2d", (4, 9, 9), **opts)[0].winograd, other


# --- through Net --------------------------------------------------------------------------


def test_small_cnn_through_net_matches_finite_differences():
    """conv -> batchnorm (per channel) -> relu -> maxpool -> conv -> avgpool -> gap -> dense, in float64."""
    from dnnspec.engine.net import Net

    model = ir.model_from_layers((2, 6, 6), [
        ("conv2d", {"filters": 3, "kernel": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
        ("maxpool", {"kernel": 2}), ("conv2d", {"filters": 4, "kernel": [2, 1]}),
        ("avgpool", {"kernel": 2, "stride": 1, "padding": 1}), ("global_avgpool", {}),
        ("dense", {"units": 3}), ("softmax", {})])
    net = Net(model, dtype=np.float64, seed=0)
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 2, 6, 6))
    y = rng.integers(0, 3, 4)
    names = ("conv1.kernel", "bn1.gamma", "conv2.kernel", "conv2.bias", "dense1.kernel")
    for name, (got, num) in net_gradients(net, x, y, names).items():
        assert rel_error(got, num) < 1e-6, name
