"""Optimizers against hand-written reference formulas, convergence, decay, clipping, subnormals.

Every test here runs twice: on the NumPy path and on the fused numba path (skipped where
numba is not installed), chosen through ``$DNNSPEC_FUSED`` as a user would.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from dnnspec.engine.optim import OPTIMIZERS, SGD, AdaGrad, Adam, RMSProp, global_norm, make_optimizer
from dnnspec.ir import FrozenDict, Step
from dnnspec.schema import OPTIMIZER

HAS_NUMBA = importlib.util.find_spec("numba") is not None


# every test once per path (conftest.both_paths)
pytestmark = pytest.mark.usefixtures("both_paths")

# --- independent references: plain Python floats, one scalar at a time, straight from the formulas ---


def ref_sgd(w, grads, lr, mu=0.0, nesterov=False):
    v = 0.0
    for g in grads:
        if mu == 0.0:
            w = w - lr * g
            continue
        v = mu * v + g
        w = w - lr * (g + mu * v if nesterov else v)
    return w


def ref_adagrad(w, grads, lr, eps=1e-10):
    s = 0.0
    for g in grads:
        s = s + g * g
        w = w - lr * g / math.sqrt(s + eps)
    return w


def ref_rmsprop(w, grads, lr, beta=0.9, eps=1e-10):
    s = 0.0
    for g in grads:
        s = beta * s + (1 - beta) * g * g
        w = w - lr * g / math.sqrt(s + eps)
    return w


def ref_adam(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = s = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        s_hat = s / (1 - b2 ** t)
        w = w - lr * m_hat / math.sqrt(s_hat + eps)
    return w


# Gradient sequences (fixed numbers, independent of w, so the reference is a pure recurrence).
GRADS = [0.5, -0.25, 1.5, 0.0, -2.0, 0.75]

CASES = [
    (SGD, {"lr": 0.1}, lambda w, gs: ref_sgd(w, gs, 0.1)),
    (SGD, {"lr": 0.1, "momentum": 0.9}, lambda w, gs: ref_sgd(w, gs, 0.1, 0.9)),
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}, lambda w, gs: ref_sgd(w, gs, 0.1, 0.9, True)),
    (AdaGrad, {"lr": 0.1}, lambda w, gs: ref_adagrad(w, gs, 0.1)),
    (RMSProp, {"lr": 0.01, "beta": 0.9}, lambda w, gs: ref_rmsprop(w, gs, 0.01)),
    (Adam, {"lr": 0.01}, lambda w, gs: ref_adam(w, gs, 0.01)),
    (Adam, {"lr": 0.05, "beta1": 0.5, "beta2": 0.9, "eps": 1e-6},
     lambda w, gs: ref_adam(w, gs, 0.05, 0.5, 0.9, 1e-6)),
]


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-12, 1e-14), (np.float32, 2e-6, 1e-6)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("cls,opts,ref", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_steps_match_formulas(cls, opts, ref, dtype, rtol, atol, both_paths):
    w0 = np.array([0.3, -1.2, 2.0], dtype)
    params = {"a.kernel": w0.copy()}
    opt = cls(params, **opts)
    assert opt.fused == (both_paths == "fused")
    scales = np.array([1.0, -0.5, 3.0], dtype)  # each coordinate sees a scaled copy of the sequence
    for k, g in enumerate(GRADS):
        opt.step(params, {"a.kernel": g * scales})
        expect = [ref(float(w0[i]), [gg * float(scales[i]) for gg in GRADS[:k + 1]]) for i in range(3)]
        assert params["a.kernel"].dtype == dtype
        np.testing.assert_allclose(params["a.kernel"], expect, rtol=rtol, atol=atol)


def test_adam_moments_are_not_bias_corrected_in_place():
    params = {"w": np.array([1.0])}
    opt = Adam(params, lr=0.1)
    opt.step(params, {"w": np.array([2.0])})
    opt.step(params, {"w": np.array([2.0])})
    # m = 0.9*(0.1*2) + 0.1*2 = 0.38 (raw EMA, never divided by 1 - b1^t)
    assert opt.state["m"]["w"][0] == pytest.approx(0.38, rel=1e-12)
    assert opt.state["s"]["w"][0] == pytest.approx(0.999 * 0.004 + 0.004, rel=1e-12)
    # first step moves by exactly -lr * g/|g| (m_hat = g, s_hat = g^2), i.e. it SUBTRACTS
    p = {"w": np.array([1.0])}
    Adam(p, lr=0.1, eps=1e-30).step(p, {"w": np.array([2.0])})
    assert p["w"][0] == pytest.approx(0.9, rel=1e-12)


def test_float32_matches_reference():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(50, 20)).astype(np.float32)
    gs = [rng.normal(size=(50, 20)).astype(np.float32) for _ in range(5)]
    params = {"k": w0.copy()}
    opt = Adam(params, lr=0.01)
    for g in gs:
        opt.step(params, {"k": g.copy()})
    assert params["k"].dtype == np.float32
    expect = np.vectorize(lambda w, *g: ref_adam(float(w), [float(x) for x in g], 0.01))(w0, *gs)
    np.testing.assert_allclose(params["k"], expect, rtol=1e-5, atol=1e-6)


def test_make_optimizer_from_ir_step():
    values, _ = OPTIMIZER["sgd"].bind([], {"lr": 0.5, "momentum": 0.5, "nesterov": True})
    params = {"d.kernel": np.array([1.0, 2.0]), "d.bias": np.array([0.0])}
    opt = make_optimizer(Step("sgd", FrozenDict(values)), params)
    assert isinstance(opt, SGD) and opt.nesterov and opt.momentum == 0.5
    opt.step(params, {"d.kernel": np.array([1.0, 1.0]), "d.bias": np.array([2.0])})
    # v = g; w -= 0.5*(g + 0.5*g) = 0.75*g
    np.testing.assert_allclose(params["d.kernel"], [0.25, 1.25])
    np.testing.assert_allclose(params["d.bias"], [-1.5])


# --- convergence ----------------------------------------------------------------

CONVERGE = [
    ("sgd", {"lr": 1e-3}),
    ("sgd", {"lr": 1e-3, "momentum": 0.9}),
    ("sgd", {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.5}),
    ("rmsprop", {"lr": 1e-3}),
    ("adam", {"lr": 0.02}),
]


def _run(kind, opts, grad_fn, w0, steps, lr_fn=None):
    values, _ = OPTIMIZER[kind].bind([], dict(opts))
    params = {"w": np.array(w0, dtype=np.float64)}
    opt = make_optimizer(Step(kind, FrozenDict(values)), params)
    for i in range(steps):
        opt.step(params, {"w": grad_fn(params["w"])}, lr=None if lr_fn is None else lr_fn(i))
    return params["w"]


@pytest.mark.parametrize("kind,opts", CONVERGE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONVERGE)])
def test_converges_on_quadratic(kind, opts):
    # f(w) = 1/2 (w - c)^T A (w - c), condition number 10
    a = np.diag([1.0, 10.0])
    c = np.array([3.0, -2.0])
    opts = dict(opts, lr=opts["lr"] * (50 if kind == "sgd" else 20 if kind == "rmsprop" else 1))
    w = _run(kind, opts, lambda w: a @ (w - c), [0.0, 0.0], 3000,
             lr_fn=(lambda i: opts["lr"] * 0.998 ** i) if kind in ("rmsprop", "adam") else None)
    np.testing.assert_allclose(w, c, atol=1e-2)


def rosenbrock_grad(w):
    x, y = w
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


@pytest.mark.parametrize("kind,opts", CONVERGE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONVERGE)])
def test_converges_on_rosenbrock(kind, opts):
    # f = (1-x)^2 + 100 (y - x^2)^2, minimum at (1, 1); start at (-1, 1)
    steps = 20000
    lr0 = opts["lr"]
    decay = kind in ("rmsprop", "adam")  # sign-like methods need a decaying lr to settle
    w = _run(kind, opts, rosenbrock_grad, [-1.0, 1.0], steps,
             lr_fn=(lambda i: lr0 * 0.9997 ** i) if decay else None)
    np.testing.assert_allclose(w, [1.0, 1.0], atol=5e-2)


# --- weight decay and clipping --------------------------------------------------


def test_l2_decay_on_kernels_only():
    params = {"d.kernel": np.array([2.0]), "d.bias": np.array([2.0])}
    opt = SGD(params, lr=0.1, weight_decay=0.5)
    grads = {"d.kernel": np.array([1.0]), "d.bias": np.array([1.0])}
    opt.step(params, grads)
    assert params["d.kernel"][0] == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))
    assert params["d.bias"][0] == pytest.approx(2.0 - 0.1 * 1.0)
    assert grads["d.kernel"][0] == 1.0  # the caller's gradient is not modified by l2 decay


def test_decoupled_decay_with_adam():
    params = {"d.kernel": np.array([2.0]), "bn.gamma": np.array([2.0])}
    opt = Adam(params, lr=0.1, weight_decay=0.5, decay_mode="decoupled", eps=1e-30)
    opt.step(params, {"d.kernel": np.array([4.0]), "bn.gamma": np.array([4.0])})
    # Adam's first step is lr*sign(g); decoupled decay then removes lr*wd*w_old
    assert params["d.kernel"][0] == pytest.approx(2.0 - 0.1 - 0.1 * 0.5 * 2.0, rel=1e-12)
    assert params["bn.gamma"][0] == pytest.approx(2.0 - 0.1, rel=1e-12)


def test_l2_and_decoupled_differ_for_adam():
    def run(mode):
        p = {"k.kernel": np.array([2.0])}
        Adam(p, lr=0.1, weight_decay=0.5, decay_mode=mode).step(p, {"k.kernel": np.array([4.0])})
        return p["k.kernel"][0]
    # l2: g_eff = 4 + 1 = 5, first Adam step is still lr*sign -> 1.9; decoupled: 1.8
    assert run("l2") == pytest.approx(1.9, rel=1e-6)
    assert run("decoupled") == pytest.approx(1.8, rel=1e-6)


def test_clipping_by_global_norm():
    params = {"a.kernel": np.array([0.0, 0.0]), "b.bias": np.array([0.0])}
    grads = {"a.kernel": np.array([3.0, 0.0]), "b.bias": np.array([4.0])}  # norm 5
    assert global_norm(grads, ["a.kernel", "b.bias"]) == pytest.approx(5.0)
    SGD(params, lr=1.0, clip_norm=1.0).step(params, grads)
    np.testing.assert_allclose(params["a.kernel"], [-0.6, 0.0])
    np.testing.assert_allclose(params["b.bias"], [-0.8])
    params2 = {"a.kernel": np.array([0.0, 0.0]), "b.bias": np.array([0.0])}
    small = {"a.kernel": np.array([0.3, 0.0]), "b.bias": np.array([0.4])}
    SGD(params2, lr=1.0, clip_norm=1.0).step(params2, small)  # norm 0.5 < 1: untouched
    np.testing.assert_allclose(params2["b.bias"], [-0.4])


def ref_chain(kind, opts, w0, grad_seq, lr):
    """The documented chain per element, in Python floats: clip by the global norm, l2 (kernels), the rule,
    decoupled decay (kernels, from the weight before the step). w0, grads: name -> list of floats."""
    o = {"momentum": 0.0, "nesterov": False, "beta": 0.9, "beta1": 0.9, "beta2": 0.999,
         "eps": 1e-8 if kind == "adam" else 1e-10, "weight_decay": 0.0, "decay_mode": "l2", "clip_norm": 0.0, **opts}
    wd, w = o["weight_decay"], {n: list(v) for n, v in w0.items()}
    st = {n: [{"v": 0.0, "m": 0.0, "s": 0.0} for _ in v] for n, v in w0.items()}
    for t, grads in enumerate(grad_seq, start=1):
        norm = math.sqrt(sum(g * g for gs in grads.values() for g in gs))
        scale = o["clip_norm"] / norm if 0 < o["clip_norm"] < norm else 1.0
        for n, gs in grads.items():
            kernel = n.endswith(".kernel")
            for i, g in enumerate(gs):
                x, old = st[n][i], w[n][i]
                g = g * scale + (wd * old if kernel and o["decay_mode"] == "l2" else 0.0)
                if kind == "sgd":
                    x["v"] = o["momentum"] * x["v"] + g
                    d = (g + o["momentum"] * x["v"]) if o["nesterov"] else x["v"]
                elif kind in ("adagrad", "rmsprop"):
                    x["s"] = x["s"] + g * g if kind == "adagrad" else o["beta"] * x["s"] + (1 - o["beta"]) * g * g
                    d = g / math.sqrt(x["s"] + o["eps"])
                else:
                    x["m"] = o["beta1"] * x["m"] + (1 - o["beta1"]) * g
                    x["s"] = o["beta2"] * x["s"] + (1 - o["beta2"]) * g * g
                    m_hat, s_hat = x["m"] / (1 - o["beta1"] ** t), x["s"] / (1 - o["beta2"] ** t)
                    d = m_hat / math.sqrt(s_hat + o["eps"])
                w[n][i] = old - lr * d - (lr * wd * old if kernel and o["decay_mode"] == "decoupled" else 0.0)
    return w


CHAIN_CASES = [
    ("sgd", {"weight_decay": 0.3}), ("sgd", {"momentum": 0.9, "clip_norm": 1.0}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "clip_norm": 2.0}),
    ("adagrad", {"weight_decay": 0.2, "clip_norm": 1.5}), ("rmsprop", {"weight_decay": 0.1, "clip_norm": 1.0}),
    ("adam", {"weight_decay": 0.1, "clip_norm": 1.0}), ("adam", {"weight_decay": 0.5, "decay_mode": "decoupled"}),
    ("adam", {"weight_decay": 0.5, "decay_mode": "decoupled", "clip_norm": 0.8, "beta1": 0.5, "beta2": 0.9}),
]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("kind,opts", CHAIN_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CHAIN_CASES)])
def test_decay_and_clipping_match_the_chain(kind, opts, dtype, rtol):
    """Weight decay (l2 and decoupled, kernels only) and clipping around every rule, against ref_chain."""
    rng = np.random.default_rng(5)
    w0 = {"d.kernel": rng.normal(size=4).astype(dtype), "d.bias": rng.normal(size=2).astype(dtype)}
    seq = [{n: (rng.normal(size=v.size) * 2).astype(dtype) for n, v in w0.items()} for _ in range(8)]
    params = {n: v.copy() for n, v in w0.items()}
    opt = OPTIMIZERS[kind](params, lr=0.05, **opts)
    for g in seq:
        opt.step(params, {n: v.copy() for n, v in g.items()})
    expect = ref_chain(kind, opts, {n: v.tolist() for n, v in w0.items()},
                       [{n: v.tolist() for n, v in g.items()} for g in seq], 0.05)
    for n in w0:
        np.testing.assert_allclose(params[n], expect[n], rtol=rtol, atol=rtol * 1e-2, err_msg=n)


def test_global_norm_reports_nonfinite():
    assert math.isnan(global_norm({"a": np.array([np.nan, 1.0])}, ["a"]))
    assert global_norm({"a": np.array([np.inf])}, ["a"]) == math.inf


# --- state and subnormals -----------------------------------------------------------


@pytest.mark.parametrize("cls,opts", [(SGD, {"momentum": 0.9}), (AdaGrad, {}), (RMSProp, {}), (Adam, {})])
def test_state_dict_round_trip_continues_identically(cls, opts):
    rng = np.random.default_rng(1)
    gs = [rng.normal(size=4).astype(np.float32) for _ in range(6)]
    p1 = {"k": np.ones(4, np.float32)}
    o1 = cls(p1, lr=0.01, **opts)
    for g in gs[:3]:
        o1.step(p1, {"k": g.copy()})
    saved = {k: v.copy() for k, v in o1.state_dict().items()}
    p2 = {"k": p1["k"].copy()}
    o2 = cls(p2, lr=0.01, **opts)
    o2.load_state_dict(saved)
    for g in gs[3:]:
        o1.step(p1, {"k": g.copy()})
        o2.step(p2, {"k": g.copy()})
    assert np.array_equal(p1["k"], p2["k"])


def test_dead_gradients_never_leave_subnormal_moments():
    params = {"k": np.full(1000, 0.5, np.float32)}
    opt = Adam(params, lr=1e-3)
    opt.step(params, {"k": np.full(1000, 1e-3, np.float32)})
    zero = {"k": np.zeros(1000, np.float32)}
    tiny = np.finfo(np.float32).tiny
    for _ in range(1500):  # 0.9^1500 * 1e-4 is far below the subnormal range
        opt.step(params, zero)
        m = opt.state["m"]["k"]
        assert not np.any((m != 0) & (np.abs(m) < tiny))
    assert np.all(opt.state["m"]["k"] == 0)
    assert np.all(np.isfinite(params["k"]))
    sgd_p = {"k": np.ones(10, np.float32)}
    sgd = SGD(sgd_p, lr=0.1, momentum=0.5)
    sgd.step(sgd_p, {"k": np.ones(10, np.float32)})
    for _ in range(300):
        sgd.step(sgd_p, {"k": np.zeros(10, np.float32)})
    v = sgd.state["v"]["k"]
    assert np.all(v == 0)


def test_adam_split_over_threads_is_bit_identical(monkeypatch):
    """Inside threads.own_threads() Adam updates pieces of its flat state on several threads
    (pieces cut across arrays); weights and moments equal the one-piece update exactly."""
    from dnnspec.engine import threads

    monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
    shapes = {"a.kernel": (7, 5), "a.bias": (5,), "b.kernel": (5, 3), "b.bias": (3,)}
    results = []
    for count in ("1", "3"):
        monkeypatch.setenv("DNNSPEC_THREADS", count)
        params = {n: np.random.default_rng(1).standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        opt = Adam(params, lr=0.01)
        rng = np.random.default_rng(2)
        with threads.own_threads():
            for _ in range(5):
                opt.step(params, {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()})
        results.append((params, {k: v.copy() for k, v in opt.state_dict().items()}))
    (p1, s1), (p3, s3) = results
    for n in shapes:
        np.testing.assert_array_equal(p1[n], p3[n])
    for k in s1:
        np.testing.assert_array_equal(s1[k], s3[k])


def test_adam_updates_non_contiguous_parameters_in_place():
    w = np.zeros((6, 4), np.float32).T  # a transposed view: not C-contiguous
    opt = Adam({"w.kernel": w}, lr=0.1)
    opt.step({"w.kernel": w}, {"w.kernel": np.ones((4, 6), np.float32)})
    np.testing.assert_allclose(w, -0.1, rtol=1e-5)


# --- the flush keeps the documented rule for every eps the schema allows -----------------

# Per coordinate: gradients so small that s is ~1e-28..1e-25, far below the old flush floor
# (tiny * 2^44 ~ 2e-25) yet large next to eps = 1e-30, and one ordinary coordinate.
TINY_SCALES = np.array([1e-14, 1e-13, 3e-13, 1e-3])
STEADY = [1.0] * 130                  # two flushes (steps 64 and 128)
DYING = [1.0] * 20 + [0.0] * 110      # the unit dies: s and m decay while m/sqrt(s) stays O(1)

ROOT_CASES = [
    (Adam, {"lr": 1e-3, "eps": 1e-30}, lambda w, gs: ref_adam(w, gs, 1e-3, eps=1e-30)),
    (Adam, {"lr": 1e-3, "beta2": 0.99, "eps": 1e-20}, lambda w, gs: ref_adam(w, gs, 1e-3, b2=0.99, eps=1e-20)),
    (RMSProp, {"lr": 1e-3, "eps": 1e-30}, lambda w, gs: ref_rmsprop(w, gs, 1e-3, eps=1e-30)),
    (AdaGrad, {"lr": 1e-3, "eps": 1e-30}, lambda w, gs: ref_adagrad(w, gs, 1e-3, eps=1e-30)),
    (Adam, {"lr": 1e-3}, lambda w, gs: ref_adam(w, gs, 1e-3)),   # the default eps: flushes as before
]


@pytest.mark.parametrize("pattern", [STEADY, DYING], ids=["steady", "dying"])
@pytest.mark.parametrize("cls,opts,ref", ROOT_CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(ROOT_CASES)])
def test_float32_flush_keeps_the_rule_for_tiny_eps(cls, opts, ref, pattern):
    """float32 with the periodic flush against the documented formula in float64 (Python floats)."""
    w0 = np.full(4, 0.5, np.float32)
    params = {"k": w0.copy()}
    opt = cls(params, **opts)
    for f in pattern:
        opt.step(params, {"k": (f * TINY_SCALES).astype(np.float32)})
    expect = [ref(float(w0[i]), [f * float(np.float32(TINY_SCALES[i])) for f in pattern]) for i in range(4)]
    np.testing.assert_allclose(params["k"], expect, rtol=1e-5)


def test_issue_repro_adam_eps_1e_30():
    params = {"w": np.zeros(4, np.float32)}
    opt = Adam(params, lr=0.001, eps=1e-30)
    for _ in range(70):
        opt.step(params, {"w": np.full(4, 1e-13, np.float32)})
    g = float(np.float32(1e-13))
    assert ref_adam(0.0, [g] * 70, 0.001, eps=1e-30) == pytest.approx(-0.0700, abs=5e-5)
    np.testing.assert_allclose(params["w"], ref_adam(0.0, [g] * 70, 0.001, eps=1e-30), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_root_flush_floor_is_under_half_a_rounding_error(dtype):
    """Any s below the floor added to eps gives eps exactly: zeroing it does not change sqrt(s + eps)."""
    from dnnspec.engine.optim import root_flush_floor

    t = np.dtype(dtype).type
    for eps in np.geomspace(1e-30, 1.0, 61):
        for decay in (0.0, 0.9, 0.999):
            floor = root_flush_floor(float(eps), decay, 64, np.dtype(dtype))
            s = np.nextafter(t(floor), t(0))
            assert s >= 0 and t(eps) + s == t(eps)
    assert root_flush_floor(1e-8, 1.0, 64, np.dtype(np.float32)) == 0.0  # AdaGrad's sum: never flushed


def test_adagrad_sum_is_never_flushed():
    params = {"k": np.zeros(3, np.float32)}
    opt = AdaGrad(params, lr=1e-3, eps=1e-30)
    g = np.float32(1e-14)
    for _ in range(200):
        opt.step(params, {"k": np.full(3, g, np.float32)})
    np.testing.assert_allclose(opt.state["s"]["k"], 200 * float(g) ** 2, rtol=1e-5)


def test_default_eps_adam_s_never_goes_subnormal():
    """With the default eps the root's floor is tiny * 2^44 as for m: s of dead units stays normal or zero."""
    params = {"k": np.full(100, 0.5, np.float32)}
    opt = Adam(params, lr=1e-3, beta2=0.9)
    opt.step(params, {"k": np.full(100, 1e-3, np.float32)})
    zero = {"k": np.zeros(100, np.float32)}
    tiny = np.finfo(np.float32).tiny
    for _ in range(1000):  # 0.9^1000 * 1e-7 is far below the subnormal range
        opt.step(params, zero)
        s = opt.state["s"]["k"]
        assert not np.any((s != 0) & (s < tiny))
    assert np.all(opt.state["s"]["k"] == 0)
