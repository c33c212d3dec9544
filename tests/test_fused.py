"""The fused (numba) optimizer step: the same bits as the NumPy path, the switch, lazy import, cache.

The formulas themselves are checked on both paths in test_optim.py (its tests run once
per path); here the two paths are compared with each other, bit for bit, and the
machinery around the kernels is checked.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.engine import fused, threads
from dnnspec.engine.net import Net
from dnnspec.engine.optim import SGD, AdaGrad, Adam, RMSProp
from dnnspec.engine.trainer import fit
from dnnspec.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                 reason="numba is not installed (pip install 'dnnspec[fast]')")

SHAPES = {"a.kernel": (30, 20), "a.bias": (20,), "b.kernel": (20, 7), "b.gamma": (7,)}

# Every optimizer of the language with the front that changes its kernel's arguments: clipping
# (global norm, active on the large gradients), l2 and decoupled decay (kernels only), Nesterov,
# and an eps small enough that the squared-gradient floor of the flush is below tiny * 2^44.
CONFIGS = [
    (SGD, {}), (SGD, {"momentum": 0.9}), (SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (AdaGrad, {}), (AdaGrad, {"eps": 1e-30, "clip_norm": 1.0}),
    (RMSProp, {}), (RMSProp, {"eps": 1e-30, "clip_norm": 1.0, "weight_decay": 0.01}),
    (Adam, {}), (Adam, {"eps": 1e-30}), (Adam, {"weight_decay": 0.1, "decay_mode": "decoupled"}),
    (Adam, {"weight_decay": 0.1, "clip_norm": 0.5}), (Adam, {"beta1": 0.5, "beta2": 0.9, "eps": 1e-6}),
]


def _train(cls, opts, dtype, fused_path, steps=150):
    """Weights and state after ``steps`` steps: gradients over 14 decades, then dead (exactly 0) from step 40,
    so the periodic flush (steps 64, 128 for these decays) meets traces of every size; lr varies per step."""
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    opt = cls(params, lr=0.01, fused=fused_path, **opts)
    assert opt.fused is fused_path
    for k in range(steps):
        alive = 1.0 if k < 40 else 0.0
        grads = {n: (rng.standard_normal(s) * alive * 10.0 ** rng.integers(-14, 1, s)).astype(dtype)
                 for n, s in SHAPES.items()}
        opt.step(params, grads, lr=0.01 * (1 + k % 3))
    return params, {k: v.copy() for k, v in opt.state_dict().items()}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,opts", CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CONFIGS)])
def test_fused_step_gives_the_numpy_paths_bits(cls, opts, dtype):
    """The kernels do the NumPy passes' operations in their order and dtype: equal weights and state, bit for bit."""
    p_np, s_np = _train(cls, opts, dtype, False)
    p_fu, s_fu = _train(cls, opts, dtype, True)
    for n in SHAPES:
        np.testing.assert_array_equal(p_fu[n], p_np[n], err_msg=n)
    assert s_fu.keys() == s_np.keys()
    for k in s_np:
        np.testing.assert_array_equal(s_fu[k], s_np[k], err_msg=k)


@needs_numba
def test_fused_step_split_over_threads_is_bit_identical(monkeypatch):
    """Inside threads.own_threads() (conv nets) the fused step runs pieces cut across arrays on several threads."""
    from dnnspec.engine import optim

    monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
    monkeypatch.setattr(optim, "FUSED_SPLIT_MIN", 1)
    results = []
    for count in ("1", "3"):
        monkeypatch.setenv("DNNSPEC_THREADS", count)
        with threads.own_threads():
            results.append(_train(Adam, {"weight_decay": 0.1, "decay_mode": "decoupled"}, np.float32, True, 70))
    (p1, s1), (p3, s3) = results
    for n in SHAPES:
        np.testing.assert_array_equal(p1[n], p3[n])
    for k in s1:
        np.testing.assert_array_equal(s1[k], s3[k])


@needs_numba
def test_non_contiguous_weights_take_the_numpy_path():
    w = np.zeros((6, 4), np.float32).T  # a transposed view: the kernels take flat views only
    opt = Adam({"w.kernel": w}, lr=0.1, fused=True)
    opt.step({"w.kernel": w}, {"w.kernel": np.ones((4, 6), np.float32)})
    np.testing.assert_allclose(w, -0.1, rtol=1e-5)


def _tiny_model():
    layers = [("dense", {"units": 16}), ("batchnorm", {}), ("elu", {}), ("dropout", {"rate": 0.2}),
              ("dense", {"units": 8}), ("relu", {}), ("dense", {"units": 3}), ("softmax", {})]
    return ir.model_from_layers((8,), layers, optimizer="adam", optimizer_options={"lr": 1e-2},
                                train={"epochs": 3, "batch": 32, "validation": 0.0, "seed": 3})


@needs_numba
def test_training_gives_the_same_weights_on_both_paths(monkeypatch):
    """A whole run (batch norm, ELU, dropout, ReLU, Adam) with the extra and without it: the same weights."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)), rng.integers(0, 3, 200)
    weights = []
    for switch in ("1", "0", "1"):  # the fused run twice: reproducible on its own too
        monkeypatch.setenv("DNNSPEC_FUSED", switch)
        net = Net(_tiny_model())
        fit(net, x, y, progress=False)
        weights.append(net.params)
    for other in weights[1:]:
        for name, value in weights[0].items():
            np.testing.assert_array_equal(other[name], value, err_msg=name)


# --- the switch ------------------------------------------------------------------------


def test_env_zero_forces_the_numpy_path(monkeypatch):
    monkeypatch.setenv("DNNSPEC_FUSED", "0")
    assert not Adam({"k": np.zeros(3, np.float32)}).fused
    assert fused.describe() == "NumPy (DNNSPEC_FUSED=0)"


@needs_numba
def test_auto_and_one_choose_the_fused_step(monkeypatch):
    for value in ("", "auto", "1"):
        monkeypatch.setenv("DNNSPEC_FUSED", value)
        assert Adam({"k": np.zeros(3, np.float32)}).fused
    monkeypatch.setenv("DNNSPEC_FUSED", "0")
    assert Adam({"k": np.zeros(3, np.float32)}, fused=True).fused  # the argument overrides the variable


def test_bad_env_value_is_one_clear_usage_error(monkeypatch):
    monkeypatch.setenv("DNNSPEC_FUSED", "yes")
    with pytest.raises(UsageError, match=r"\$DNNSPEC_FUSED is 'yes'; expected 0 .* 1 .* or auto .*; or unset it"):
        Adam({"k": np.zeros(3, np.float32)})


def test_without_numba_auto_falls_back_and_one_refuses(monkeypatch):
    """What an installation without the extra sees (numba's failed import, as fused._load leaves it)."""
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_missing", "ModuleNotFoundError: No module named 'numba'")
    monkeypatch.setenv("DNNSPEC_FUSED", "auto")
    assert not SGD({"k": np.zeros(3)}, momentum=0.9).fused
    assert fused.describe().startswith("NumPy (numba not available")
    monkeypatch.setenv("DNNSPEC_FUSED", "1")
    with pytest.raises(UsageError, match=r"=1 asks .* need numba.*pip install 'dnnspec\[fast\]', or unset"):
        SGD({"k": np.zeros(3)})


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_blocked_numba_import_trains_on_the_numpy_path():
    """numba absent for real (its import fails in a fresh interpreter): auto trains with NumPy, no error."""
    r = _python("import sys; sys.modules['numba'] = None\n"
                "import numpy as np\nfrom dnnspec.engine.optim import Adam\n"
                "p = {'k': np.ones(4, np.float32)}\nopt = Adam(p, lr=0.1)\n"
                "opt.step(p, {'k': np.ones(4, np.float32)})\nprint(opt.fused, abs(float(p['k'][0]) - 0.9) < 1e-6)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]  # NumPy path; first Adam step: w - lr * sign(g)


def test_check_never_imports_numba():
    spec = ROOT / "specs" / "fashion_mlp.dnn"
    r = _python(f"import sys\nfrom dnnspec.cli import main\nrc = main(['check', {str(spec)!r}])\n"
                "print('NUMBA', 'numba' in sys.modules)\nsys.exit(rc)\n")
    assert r.returncode == 0, r.stderr
    assert "NUMBA False" in r.stdout


def test_evaluation_passes_never_import_numba():
    """predict and evaluate (as export and serve run them) stay on the NumPy passes: no numba start-up cost."""
    r = _python("import sys, numpy as np, dnnspec\nnet = dnnspec.compile('specs/fashion_mlp.dnn')\n"
                "x = np.zeros((3, 1, 28, 28), np.uint8)\nnet.predict(x)\nnet.evaluate(x, np.zeros(3, np.int64))\n"
                "print('NUMBA', 'numba' in sys.modules)\n")
    assert r.returncode == 0, r.stderr
    assert "NUMBA False" in r.stdout


@needs_numba
def test_numba_is_imported_when_an_optimizer_is_built_and_loaded_from_the_cache_next_time():
    """Importing the engine imports no numba; building an optimizer does; a second start compiles nothing."""
    code = ("import sys, numpy as np\nfrom dnnspec.engine import net, trainer, optim\n"
            "before = 'numba' in sys.modules\n"
            "p = {'k': np.ones(4, np.float32)}\nopt = optim.Adam(p)\nopt.step(p, {'k': np.ones(4, np.float32)})\n"
            "from dnnspec.engine import fused_kernels as k\n"
            "print(before, 'numba' in sys.modules, sum(k.adam.stats.cache_misses.values()))\n")
    first = _python(code)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[:2] == ["False", "True"]
    second = _python(code)  # the first run compiled (or found) and saved the float32 kernel
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["False", "True", "0"]


# --- the kernels of the MLP's step: loss, input scaling, the optimizer's kept views -----------


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 7, 8, 10, 17, 128, 129])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_compiled_softmax_cross_entropy_gives_the_numpy_passes_bits(dtype, k, smoothing, monkeypatch):
    """Loss and gradient bit for bit: NumPy's pairwise row sums (8 running sums) replayed, ties in the max,
    logits over many decades; K = 129 (above the kernels' 128) takes the NumPy path on both switches."""
    from dnnspec.engine.losses import softmax_cross_entropy

    rng = np.random.default_rng(k)
    z = (rng.normal(size=(37, k)) * 10.0 ** rng.integers(-3, 2, (37, k))).astype(dtype)
    z[0, :2] = z[0].max() + 1  # a tie for the maximum
    y = rng.integers(0, k, 37)
    y[1] = k - 1
    got = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("DNNSPEC_FUSED", switch)
        got[switch] = softmax_cross_entropy(z, y, out=np.empty_like(z), label_smoothing=smoothing)
    assert got["1"][0] == got["0"][0]
    np.testing.assert_array_equal(_bits(got["1"][1]), _bits(got["0"][1]))


@needs_numba
def test_compiled_softmax_cross_entropy_leaves_a_bad_label_to_numpys_error(monkeypatch):
    from dnnspec.engine.losses import softmax_cross_entropy

    monkeypatch.setenv("DNNSPEC_FUSED", "1")
    with pytest.raises(IndexError):
        softmax_cross_entropy(np.zeros((3, 4), np.float32), np.array([0, 4, 1]))


@needs_numba
def test_training_on_uint8_images_gives_the_same_weights_on_both_paths(monkeypatch):
    """uint8 inputs scaled by 1/255 in training (net._prepare's kernel), label smoothing (the loss kernels),
    the fused Adam step on the net's own gradient buffers (its views made once): the same weights."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (300, 12)).astype(np.uint8), rng.integers(0, 4, 300)
    layers = [("dense", {"units": 16}), ("relu", {}), ("dense", {"units": 4}), ("softmax", {})]
    weights = []
    for switch in ("1", "0"):
        monkeypatch.setenv("DNNSPEC_FUSED", switch)
        model = ir.model_from_layers((12,), layers, optimizer="adam", optimizer_options={"lr": 1e-2},
                                     train={"epochs": 2, "batch": 64, "validation": 0.0, "seed": 5}, scale=1 / 255)
        smoothed = dataclasses.replace(model.loss, options=ir.FrozenDict({"label_smoothing": 0.1}))
        net = Net(dataclasses.replace(model, loss=smoothed))
        fit(net, x, y, progress=False)
        weights.append(net.params)
    for name, value in weights[1].items():
        np.testing.assert_array_equal(weights[0][name], value, err_msg=name)


@needs_numba
def test_fused_step_follows_replaced_arrays():
    """The step keeps its flat views while params and grads hold the same arrays, and remakes them when
    either is replaced: the same weights as the NumPy path through both."""
    out = []
    for path in (True, False):
        rng = np.random.default_rng(2)
        params = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
        grads = {n: np.empty(s, np.float32) for n, s in SHAPES.items()}
        opt = Adam(params, lr=0.01, fused=path)
        r = np.random.default_rng(3)
        for k in range(30):
            if k == 10:
                params["a.kernel"] = params["a.kernel"].copy()
            if k == 20:
                grads = {n: g.copy() for n, g in grads.items()}
            for g in grads.values():
                g[...] = r.standard_normal(g.shape)
            opt.step(params, grads)
        out.append(params)
    for n in SHAPES:
        np.testing.assert_array_equal(out[0][n], out[1][n], err_msg=n)
