"""Engine ops: finite-difference gradient checks in float64 and formula checks.

Every test runs on the NumPy passes and on the compiled training kernels (numba; skipped
without it), chosen through ``$DNNSPEC_FUSED``; the kernels are also compared with the
NumPy passes bit for bit.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from dnnspec import ir
from dnnspec.engine import ops  # noqa: F401  (registers the ops)
from dnnspec.engine.base import compile_op
from dnnspec.engine.init import init_param

F64 = np.float64
HAS_NUMBA = importlib.util.find_spec("numba") is not None


# every test once per path (conftest.both_paths)
pytestmark = pytest.mark.usefixtures("both_paths")


def make_op(kind: str, in_shape: tuple[int, ...], dtype=F64, seed: int = 0, **opts):
    """One compiled op, its params (learned alphas randomised, so their gradients matter)."""
    layer = ir.build_layers(in_shape, [ir.LayerDecl(kind, bind(kind, opts))])[0]
    rng = np.random.default_rng(seed)
    params = {p.name: init_param(p, rng, dtype) for p in layer.params}
    for name in params:
        if name.endswith(".alpha"):
            params[name] = rng.uniform(0.2, 1.5, params[name].shape).astype(dtype)
        if name.endswith((".gamma", ".beta", ".bias")):
            params[name] = rng.normal(0.5, 0.5, params[name].shape).astype(dtype)
    return compile_op(layer, dtype), params, layer


def bind(kind: str, opts: dict) -> dict:
    from dnnspec.registry import LAYERS

    return LAYERS[kind].bind([], dict(opts))[0]


def check_grads(kind, in_shape, n=4, training=True, seed=0, tol=1e-6, **opts):
    """Compare every analytic gradient (dx and each param) with centred differences of sum(y * w)."""
    op, params, layer = make_op(kind, in_shape, seed=seed, **opts)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(n, *in_shape))
    w = rng.normal(size=(n, *layer.out_shape))

    def f() -> float:
        return float(np.sum(op.forward(x, params, training, np.random.default_rng(7)) * w))

    f()
    grads: dict[str, np.ndarray] = {}
    dx = op.backward(w.copy(), params, grads).copy()
    assert rel_error(dx, numeric_grad(f, x)) < tol, "dx"
    for p in layer.params:
        if p.trainable:
            assert rel_error(grads[p.name], numeric_grad(f, params[p.name])) < tol, p.name
    return op, params


CASES = [
    ("dense", (5,), {"units": 3}),
    ("dense", (5,), {"units": 3, "bias": False}),
    ("relu", (6,), {}),
    ("relu", (2, 3, 3), {}),
    ("leaky_relu", (6,), {"alpha": 0.2}),
    ("leaky_relu", (6,), {"learn": True}),
    ("leaky_relu", (6,), {"learn": True, "per": "channel"}),
    ("leaky_relu", (3, 2, 2), {"learn": True}),
    ("leaky_relu", (3, 2, 2), {"learn": True, "per": "channel"}),
    ("elu", (6,), {"alpha": 0.7}),
    ("elu", (6,), {"learn": True}),
    ("elu", (6,), {"learn": True, "per": "channel"}),
    ("elu", (3, 2, 2), {"learn": True}),
    ("elu", (3, 2, 2), {"learn": True, "per": "channel"}),
    ("softplus", (6,), {}),
    ("sigmoid", (6,), {}),
    ("tanh", (6,), {}),
    ("softmax", (5,), {}),
    ("batchnorm", (4,), {}),
    ("batchnorm", (3, 2, 3), {}),
    ("dropout", (8,), {"rate": 0.4}),
    ("dropout", (8,), {"rate": 0.4, "mode": "scale"}),
    ("flatten", (2, 3, 2), {}),
]


@pytest.mark.parametrize("kind,shape,opts", CASES, ids=[f"{k}-{len(s)}d-{o}" for k, s, o in CASES])
def test_gradients_training(kind, shape, opts):
    check_grads(kind, shape, n=5, **opts)


@pytest.mark.parametrize("kind,shape,opts", [("batchnorm", (4,), {}), ("batchnorm", (2, 2, 2), {}),
                                             ("dropout", (6,), {"rate": 0.5, "mode": "scale"})])
def test_gradients_evaluation(kind, shape, opts):
    check_grads(kind, shape, training=False, **opts)


FORMULAS = {
    "relu": lambda x, a: np.maximum(x, 0),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, a * x),
    "elu": lambda x, a: np.where(x >= 0, x, a * (np.exp(x) - 1)),
    "softplus": lambda x, a: np.log(1 + np.exp(x)),
    "sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "tanh": lambda x, a: np.tanh(x),
}


@pytest.mark.parametrize("kind", sorted(FORMULAS))
def test_activation_values_match_lecture(kind):
    op, params, _ = make_op(kind, (7,), alpha=0.3) if kind in ("leaky_relu", "elu") else make_op(kind, (7,))
    x = np.linspace(-5, 5, 21).reshape(3, 7)
    assert np.allclose(op.forward(x, params, False, None), FORMULAS[kind](x, 0.3), rtol=1e-12, atol=1e-12)


def test_softmax_values_and_rows_sum_to_one():
    op, params, _ = make_op("softmax", (4,))
    x = np.array([[1.0, 2.0, 3.0, 4.0], [1e4, -1e4, 0.0, 1e4]])
    y = op.forward(x, params, False, None)
    e = np.exp(x[0] - 4)
    assert np.allclose(y[0], e / e.sum())
    assert np.allclose(y[1], [0.5, 0, 0, 0.5]) and np.allclose(y.sum(1), 1)


def test_stable_for_extreme_inputs():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        for kind in ("softplus", "sigmoid", "elu"):
            op, params, _ = make_op(kind, (5,), dtype=np.float32)
            y = op.forward(x, params, True, None)
            assert np.all(np.isfinite(y)) and y.dtype == np.float32
            assert np.all(np.isfinite(op.backward(np.ones_like(y), params, {})))
    op, params, _ = make_op("softplus", (5,))
    assert np.allclose(op.forward(x.astype(F64), params, False, None), [[0, np.log1p(np.exp(-50)), np.log(2), 50, 1e4]])


def test_dense_is_x_w_plus_b_and_need_dx_false_skips_dx():
    op, params, _ = make_op("dense", (5,), units=3)
    x = np.random.default_rng(0).normal(size=(4, 5))
    y = op.forward(x, params, True, None)
    assert np.allclose(y, x @ params["dense1.kernel"] + params["dense1.bias"])
    op.need_dx = False
    grads = {}
    assert op.backward(np.ones((4, 3)), params, grads) is None
    assert np.allclose(grads["dense1.kernel"], x.T @ np.ones((4, 3)))


def test_gradient_buffers_are_reused():
    op, params, _ = make_op("dense", (5,), units=3, dtype=np.float32)
    x = np.ones((4, 5), np.float32)
    grads = {"dense1.kernel": np.zeros((5, 3), np.float32), "dense1.bias": np.zeros(3, np.float32)}
    before = dict(grads)
    for _ in range(2):
        op.forward(x, params, True, None)
        op.backward(np.ones((4, 3), np.float32), params, grads)
    assert all(grads[k] is before[k] for k in grads) and np.allclose(grads["dense1.bias"], 4)


def test_float32_stays_float32():
    for kind, shape, opts in CASES:
        op, params, layer = make_op(kind, shape, dtype=np.float32, **opts)
        x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
        y = op.forward(x, params, True, np.random.default_rng(0))
        dx = op.backward(np.ones_like(y), params, grads := {})
        assert y.dtype == np.float32 and dx.dtype == np.float32, kind
        assert all(g.dtype == np.float32 for g in grads.values()), kind


# --- batch norm -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_batchnorm_training_formula_and_running_average(shape):
    op, params, _ = make_op("batchnorm", shape, momentum=0.9, eps=1e-3)
    rng = np.random.default_rng(3)
    axes = (0,) if len(shape) == 1 else (0, 2, 3)
    cs = (1, -1) + (1,) * (len(shape) - 1)
    mean, var = np.zeros(shape[0]), np.ones(shape[0])
    for step in range(3):
        x = rng.normal(2.0 + step, 3.0, size=(6, *shape))
        y = op.forward(x, params, True, None)
        mu = x.mean(axis=axes)
        v = ((x - mu.reshape(cs)) ** 2).mean(axis=axes)  # biased
        expect = params["bn1.gamma"].reshape(cs) * (x - mu.reshape(cs)) / np.sqrt(v.reshape(cs) + 1e-3) \
            + params["bn1.beta"].reshape(cs)
        assert np.allclose(y, expect)
        mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * v
        assert np.allclose(params["bn1.running_mean"], mean)
        assert np.allclose(params["bn1.running_var"], var)
    x = rng.normal(size=(4, *shape))
    expect = params["bn1.gamma"].reshape(cs) * (x - mean.reshape(cs)) / np.sqrt(var.reshape(cs) + 1e-3) \
        + params["bn1.beta"].reshape(cs)
    assert np.allclose(op.forward(x, params, False, None), expect)
    assert np.allclose(params["bn1.running_mean"], mean)  # evaluation leaves them alone


# --- dropout ----------------------------------------------------------------------


def test_dropout_inverted_keeps_expected_activation_and_eval_is_identity():
    op, params, _ = make_op("dropout", (1000,), dtype=np.float32, rate=0.3)
    x = np.full((200, 1000), 2.0, np.float32)
    y = op.forward(x, params, True, np.random.default_rng(0))
    kept = y != 0
    assert np.allclose(y[kept], 2.0 / 0.7)
    assert abs(kept.mean() - 0.7) < 0.005
    assert abs(y.mean() - 2.0) < 0.02
    assert op.forward(x, params, False, None) is x


def test_dropout_scale_eval_equals_expectation_of_training():
    op, params, _ = make_op("dropout", (1000,), rate=0.25, mode="scale")
    x = np.random.default_rng(1).normal(size=(1, 1000))
    rng = np.random.default_rng(2)
    mean = np.mean([op.forward(x, params, True, rng).copy() for _ in range(4000)], axis=0)
    y = op.forward(x, params, False, None)
    assert np.allclose(y, 0.75 * x)
    assert np.max(np.abs(mean - y)) < 4 * np.sqrt(0.25 * 0.75 / 4000) * np.max(np.abs(x))
    train = op.forward(x, params, True, np.random.default_rng(3))
    assert set(np.unique(np.round(train / np.where(x == 0, 1, x), 12))) <= {0.0, 1.0}


def test_dropout_masks_come_from_the_generator():
    op, params, _ = make_op("dropout", (50,), rate=0.5)
    x = np.ones((4, 50))
    a = op.forward(x, params, True, np.random.default_rng(5)).copy()
    b = op.forward(x, params, True, np.random.default_rng(5)).copy()
    c = op.forward(x, params, True, np.random.default_rng(6)).copy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- the compiled training kernels against the NumPy passes ------------------------------

KERNEL_CASES = [
    ("relu", (7,), {}), ("relu", (3, 4, 5), {}),
    ("leaky_relu", (7,), {"alpha": 0.1}), ("elu", (7,), {"alpha": 0.7}), ("elu", (3, 4, 5), {}),
    ("dropout", (7,), {"rate": 0.3}), ("dropout", (3, 4, 5), {"rate": 0.5, "mode": "scale"}),
    ("batchnorm", (7,), {}), ("batchnorm", (3, 4, 5), {}),
]
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 80.0, -80.0]


class _Uniforms:
    """A generator stand-in for dropout: the given uniforms, which include the keep probability itself."""

    def __init__(self, u):
        self.u = u

    def random(self, shape, dtype, out):
        out[...] = self.u.reshape(shape)
        return out


def _run_op(kind, shape, opts, dtype, x, dy, u):
    op, params, _ = make_op(kind, shape, dtype=dtype, **opts)
    y = op.forward(x, params, True, _Uniforms(u)).copy()
    grads = {}
    dx = op.backward(dy, params, grads).copy()
    return op, [y, dx, *[grads[k] for k in sorted(grads)], *[params[k] for k in sorted(params)]]


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,shape,opts", KERNEL_CASES, ids=[f"{k}-{len(s)}d" for k, s, _ in KERNEL_CASES])
def test_training_kernels_give_the_numpy_passes_bits(kind, shape, opts, dtype, monkeypatch):
    """Forward, backward, parameter gradients and running statistics, bit for bit (signed zeros and NaN too)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, *shape)).astype(dtype)
    if kind != "batchnorm":  # batch statistics would spread a NaN or inf everywhere
        x.reshape(-1)[:len(SPECIAL)] = SPECIAL
    dy = rng.normal(size=x.shape).astype(dtype)
    dy.reshape(-1)[:4] = [-1.0, -0.0, 2.0, -3.0]
    keep = dtype(1.0 - opts.get("rate", 0.0))
    u = rng.random(x.size).astype(dtype)
    u[:3] = [keep, np.nextafter(keep, dtype(0)), np.nextafter(keep, dtype(1))]
    out = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("DNNSPEC_FUSED", switch)
        with np.errstate(all="ignore"):  # inf * 0 and friends, on purpose
            op, out[switch] = _run_op(kind, shape, opts, dtype, x, dy, u)
        assert (getattr(op, "compiled", None) is not None) == (switch == "1")
    for a, b in zip(out["0"], out["1"]):
        np.testing.assert_array_equal(_bits(b), _bits(a))


def test_evaluation_passes_never_compile():
    op, params, _ = make_op("relu", (4,))
    op.forward(np.ones((2, 4)), params, False, None)
    assert op.compiled is None
