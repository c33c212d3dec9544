"""Losses: values against direct formulas, gradients against finite differences, stability."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from dnnspec.engine.losses import binary_cross_entropy, mse, softmax_cross_entropy


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)) * 3
    y = rng.integers(0, 4, 6)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss, d = softmax_cross_entropy(z, y)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(6), y])), rel=1e-12)
    num = numeric_grad(lambda: softmax_cross_entropy(z, y, grad=False)[0], z)
    assert rel_error(d, num) < 1e-6


def test_binary_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(7, 1)) * 3
    t = rng.integers(0, 2, 7)
    s = 1 / (1 + np.exp(-z[:, 0]))
    loss, d = binary_cross_entropy(z, t)
    assert loss == pytest.approx(-np.mean(t * np.log(s) + (1 - t) * np.log(1 - s)), rel=1e-12)
    assert d.shape == z.shape
    num = numeric_grad(lambda: binary_cross_entropy(z, t, grad=False)[0], z)
    assert rel_error(d, num) < 1e-6


def test_mse_value_and_gradient():
    rng = np.random.default_rng(2)
    o = rng.normal(size=(5, 3))
    t = rng.normal(size=(5, 3))
    loss, d = mse(o, t)
    assert loss == pytest.approx(np.mean((o - t) ** 2), rel=1e-12)
    num = numeric_grad(lambda: mse(o, t, grad=False)[0], o)
    assert rel_error(d, num) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_are_stable(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    y = np.array([1, 0, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, d = softmax_cross_entropy(z, y)
        # example 0: logsumexp = 1e4, picked -1e4 -> 2e4; example 1: log 3; example 2: log 2
        assert loss == pytest.approx((2e4 + np.log(3) + np.log(2)) / 3, rel=1e-6)
        assert np.allclose(d * 3, [[1, -1, 0], [1 / 3 - 1, 1 / 3, 1 / 3], [0.5 - 1, 0.5, 0]], atol=1e-6)
        zb = np.array([[1e4], [-1e4], [1e4], [-1e4]], dtype=dtype)
        tb = np.array([1, 0, 0, 1])
        loss, d = binary_cross_entropy(zb, tb)
        assert loss == pytest.approx(2e4 / 4, rel=1e-6)
        assert np.allclose(d[:, 0] * 4, [0, 0, 1, -1])
    assert d.dtype == dtype


def test_gradient_written_into_given_buffer():
    z = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    buf = np.empty_like(z)
    _, d = softmax_cross_entropy(z, np.array([0, 1, 2, 0]), out=buf)
    assert d is buf and np.allclose(d.sum(1), 0, atol=1e-7)
