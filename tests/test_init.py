"""Initialisation: empirical variance of each scheme and fan mode against the lecture's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from dnnspec.engine.init import init_param
from dnnspec.ir import ParamSpec

# init -> variance as a function of n = the fan (the lecture's formulas with fan=avg)
EXPECTED_VAR = {
    "xavier_normal": lambda n: 1 / n,          # 2 / (n_in + n_out)
    "xavier_uniform": lambda n: (np.sqrt(3 / n)) ** 2 / 3,  # r = sqrt(6 / (n_in + n_out))
    "he_normal": lambda n: 2 / n,              # 4 / (n_in + n_out)
    "he_uniform": lambda n: (np.sqrt(6 / n)) ** 2 / 3,      # r = sqrt(12 / (n_in + n_out))
    "lecun_normal": lambda n: 1 / n,
    "lecun_uniform": lambda n: 1 / n,
}


@pytest.mark.parametrize("fan", ["avg", "in", "out"])
@pytest.mark.parametrize("init", sorted(EXPECTED_VAR))
def test_variance_within_3_percent(init, fan):
    n_in, n_out = (1000, 1000) if fan == "avg" else (800, 1250)  # unequal fans tell in from out
    spec = ParamSpec("d.kernel", (1000, 1000), init, fan, n_in, n_out)
    w = init_param(spec, np.random.default_rng(0), np.float32)
    n = {"avg": (n_in + n_out) / 2, "in": n_in, "out": n_out}[fan]
    assert w.shape == (1000, 1000) and w.dtype == np.float32
    assert abs(w.var() / EXPECTED_VAR[init](n) - 1) < 0.03
    assert abs(w.mean()) < 0.01 * np.sqrt(EXPECTED_VAR[init](n))  # 10 standard errors
    if init.endswith("uniform"):
        r = np.sqrt(3 * EXPECTED_VAR[init](n))
        assert w.max() <= r and w.min() >= -r and w.max() > 0.99 * r


def test_lecture_numbers_directly():
    rng = np.random.default_rng(1)
    n_in, n_out = 600, 1400
    xn = init_param(ParamSpec("a", (1000, 1000), "xavier_normal", "avg", n_in, n_out), rng)
    hn = init_param(ParamSpec("b", (1000, 1000), "he_normal", "avg", n_in, n_out), rng)
    hu = init_param(ParamSpec("c", (1000, 1000), "he_uniform", "avg", n_in, n_out), rng)
    he_in = init_param(ParamSpec("d", (1000, 1000), "he_normal", "in", n_in, n_out), rng)
    assert abs(xn.var() / (2 / (n_in + n_out)) - 1) < 0.03
    assert abs(hn.var() / (4 / (n_in + n_out)) - 1) < 0.03
    assert abs(hu.max() / np.sqrt(12 / (n_in + n_out)) - 1) < 0.01
    assert abs(he_in.var() / (2 / n_in) - 1) < 0.03


def test_plain_and_constant_inits():
    rng = np.random.default_rng(2)
    w = init_param(ParamSpec("n", (1000, 1000), "normal", std=0.05), rng)
    assert abs(w.std() / 0.05 - 1) < 0.015
    u = init_param(ParamSpec("u", (1000, 1000), "uniform", limit=0.2), rng)
    assert abs(u.var() / (0.2 ** 2 / 3) - 1) < 0.03 and np.abs(u).max() <= 0.2
    assert np.array_equal(init_param(ParamSpec("z", (3,), "zeros"), rng), np.zeros(3))
    assert np.array_equal(init_param(ParamSpec("o", (3,), "ones"), rng, np.float64), np.ones(3))
    c = init_param(ParamSpec("c", (4,), "const", value=0.25), rng)
    assert c.dtype == np.float32 and np.all(c == 0.25)


def test_same_seed_same_weights_in_both_dtypes():
    spec = ParamSpec("k", (30, 20), "he_uniform", "avg", 30, 20)
    a = init_param(spec, np.random.default_rng(5), np.float32)
    b = init_param(spec, np.random.default_rng(5), np.float64)
    assert np.array_equal(a, b.astype(np.float32))
