"""Centred finite differences, shared by the gradient-check tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numeric_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by centred differences, perturbing ``x`` in place (float64 expected)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
        it.iternext()
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a-b| / max(|a|+|b|, tiny): the usual gradient-check measure."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.maximum(np.abs(a) + np.abs(b), 1e-8)
    return float(np.max(np.abs(a - b) / denom))


def net_gradients(net, x, y, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (net.loss_and_grads gradient, centred differences)} for a float64 Net.

    Batch-norm running statistics (which every training pass updates) are held fixed
    while the loss is re-evaluated.
    """
    _, grads = net.loss_and_grads(x, y)
    grads = {k: v.copy() for k, v in grads.items()}
    running = {k: v.copy() for k, v in net.params.items() if "running" in k}

    def loss() -> float:
        for k, v in running.items():
            net.params[k][...] = v
        return net.loss_and_grads(x, y)[0]

    return {name: (grads[name], numeric_grad(loss, net.params[name])) for name in names}
