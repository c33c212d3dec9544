"""Losses on the network's logits, each fused with its output activation.

Every function returns ``(mean loss, dlogits)`` where ``dlogits`` is the gradient of
the mean loss with respect to the logits (already divided by the batch size). Pass
``out`` to write ``dlogits`` into a reused array; ``grad=False`` skips it (None).

* softmax cross-entropy: L = mean_n [ logsumexp(z_n) - z_n[y_n] ],
  dz = (softmax(z) - onehot(y)) / N. logsumexp(z) = max z + log sum e^(z - max z),
  so logits of +-1e4 neither overflow nor lose the loss.
  With label smoothing e (K classes) the target is q = (1-e) onehot(y) + e/K:
  L = mean_n [ logsumexp(z_n) - sum_k q_nk z_nk ], dz = (softmax(z) - q) / N.
* binary cross-entropy on logits z (N, 1) or (N,), labels t in {0, 1}; or (N, T) for T
  yes/no labels (multi-label, ``targets T``), the mean over all N*T values:
  L = mean [ max(z, 0) - z t + log(1 + e^-|z|) ]  (= -t log s - (1-t) log(1-s), s = sigmoid z),
  dz = (sigmoid(z) - t) / (N*T).
* mean squared error over every element: L = mean (o - t)^2, do = 2 (o - t) / (N * K).

Mixed labels (mixup, cutmix: ``mix=(perm, lam)``, see :class:`dnnspec.augment.Mix`): example
n was made of lam parts example n and 1 - lam parts example perm[n], and so is its target.
Cross-entropy takes the soft target t_n = lam onehot(y_n) + (1 - lam) onehot(y_perm[n]),
then label smoothing on top, q = (1-e) t + e/K: L = mean_n [ logsumexp(z_n) - sum_k q_nk z_nk ]
(= lam CE(y) + (1 - lam) CE(y[perm]) when e = 0), dz = (softmax(z) - q) / N. Binary
cross-entropy takes t <- lam t + (1 - lam) t[perm] in its formula above. lam = 1 gives the
unmixed loss and gradient, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from . import fused
from .ops import stable_sigmoid


def _out(out: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    if out is None or out.shape != like.shape or out.dtype != like.dtype:
        return np.empty_like(like)
    return out


def softmax_shift_kernel(logits, y, e, z, picked, r64):
    """Training pass 1 of softmax cross-entropy, row by row: z = logits - max, picked = sum_k q_k z_k (float64).

    As the NumPy passes: the row maximum, the shifted logits, z[y] cast to float64, and with
    label smoothing e, (1-e) z[y] + (e/K) * the float64 row sum, summed in NumPy's pairwise
    order (8 running sums from a start of 0; K <= 128). False (nothing to trust) when a
    label is outside 0..K-1: the NumPy path then raises its IndexError.
    """
    n, k = logits.shape
    for i in range(n):
        yi = y[i]
        if yi < 0 or yi >= k:
            return False
        mx = logits[i, 0]
        for j in range(1, k):
            v = logits[i, j]
            if v > mx or v != v:
                mx = v
        for j in range(k):
            z[i, j] = logits[i, j] - mx
        p = np.float64(z[i, yi])
        if e != 0:
            if k < 8:
                s = 0.0
                for j in range(k):
                    s += np.float64(z[i, j])
            else:
                for j in range(8):
                    r64[j] = np.float64(z[i, j])
                j = 8
                while j < k - k % 8:
                    for q in range(8):
                        r64[q] += np.float64(z[i, j + q])
                    j += 8
                s = ((r64[0] + r64[1]) + (r64[2] + r64[3])) + ((r64[4] + r64[5]) + (r64[6] + r64[7]))
                while j < k:
                    s += np.float64(z[i, j])
                    j += 1
                s = 0.0 + s
            p = (1.0 - e) * p + (e / k) * s
        picked[i] = p
    return True


def softmax_grad_kernel(z, y, ek, hit, inv_n, total, r):
    """Training pass 2, on z = exp(shifted logits): total = the row sums (NumPy's pairwise order, as above),
    then z <- ((z / total - e/K) - (1-e) [k = y]) / N elementwise, as the NumPy passes do it. ``ek`` is e/K
    (0: not subtracted), ``hit`` 1-e, ``inv_n`` 1/N, all of z's dtype."""
    n, k = z.shape
    for i in range(n):
        if k < 8:
            r[0] = 0
            s = r[0]  # a 0 of z's dtype
            for j in range(k):
                s += z[i, j]
        else:
            for j in range(8):
                r[j] = z[i, j]
            j = 8
            while j < k - k % 8:
                for q in range(8):
                    r[q] += z[i, j + q]
                j += 8
            s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            while j < k:
                s += z[i, j]
                j += 1
        total[i] = s
        yi = y[i]
        for j in range(k):
            v = z[i, j] / s
            if ek != 0:
                v = v - ek
            if j == yi:
                v = v - hit
            z[i, j] = v * inv_n


def _softmax_ce_compiled(logits: np.ndarray, y: np.ndarray, out: np.ndarray | None,
                         e: float) -> tuple[float, np.ndarray] | None:
    """The plain (unmixed) training loss and gradient with the compiled kernels, or None where they do not apply."""
    n, k = logits.shape
    if k > 128 or not logits.flags.c_contiguous or logits.dtype not in (np.float32, np.float64):
        return None
    shift, grad = fused.compiled(softmax_shift_kernel), fused.compiled(softmax_grad_kernel)
    if shift is None or grad is None:
        return None
    y = np.ascontiguousarray(y).reshape(n)
    if y.dtype.kind not in "iu":
        return None
    z, picked = _out(out, logits), np.empty(n)
    r64 = np.empty(8)
    if not shift(logits, y, e, z, picked, r64):
        return None
    np.exp(z, out=z)
    t = z.dtype.type
    total = np.empty(n, z.dtype)
    grad(z, y, t(e / k), t(1.0 - e), t(1.0 / n), total, np.empty(8, z.dtype))
    loss = float(np.mean(np.log(total.astype(np.float64)) - picked))
    return loss, z


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray, out: np.ndarray | None = None,
                          grad: bool = True, label_smoothing: float = 0.0,
                          mix: tuple[np.ndarray, float] | None = None) -> tuple[float, np.ndarray | None]:
    """logits (N, K) float, y (N,) class indices -> (mean loss, dlogits (N, K)).

    ``label_smoothing`` e: targets (1-e) onehot + e/K (e = 0: the plain loss, the same bits).
    ``mix`` (perm (N,), lam): the soft target lam onehot(y) + (1-lam) onehot(y[perm]) (module doc).
    """
    if grad and mix is None:  # a training pass: two compiled passes around NumPy's exp (the same bits)
        done = _softmax_ce_compiled(logits, y, out, float(label_smoothing))
        if done is not None:
            return done
    n, k = logits.shape
    rows = np.arange(n)
    y = np.asarray(y).astype(np.intp, copy=False)
    z = np.subtract(logits, logits.max(axis=1, keepdims=True), out=_out(out, logits))
    picked = z[rows, y].astype(np.float64)  # sum_k t_k z_k
    if mix is not None:
        lam, y2 = float(mix[1]), y[np.asarray(mix[0])]
        picked = lam * picked + (1.0 - lam) * z[rows, y2].astype(np.float64)
    e = float(label_smoothing)
    if e:  # sum_k q_k z_k on the shifted logits (the shift cancels: sum_k q_k = 1)
        picked = (1.0 - e) * picked + (e / k) * z.sum(axis=1, dtype=np.float64)
    np.exp(z, out=z)
    total = z.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0].astype(np.float64)) - picked))
    if not grad:
        return loss, None
    z /= total
    if e:
        z -= z.dtype.type(e / k)
    if mix is None:
        z[rows, y] -= z.dtype.type(1.0 - e)
    else:  # two passes, one label per row each: where y[perm] = y both weights count
        z[rows, y] -= z.dtype.type((1.0 - e) * lam)
        z[rows, y2] -= z.dtype.type((1.0 - e) * (1.0 - lam))
    z *= z.dtype.type(1.0 / n)
    return loss, z


def binary_cross_entropy(logits: np.ndarray, y: np.ndarray, out: np.ndarray | None = None,
                         grad: bool = True, mix: tuple[np.ndarray, float] | None = None
                         ) -> tuple[float, np.ndarray | None]:
    """logits (N, 1) or (N,), y (N,) 0/1; or logits and y (N, T) -> (mean loss over all values, dlogits).

    ``mix`` (perm (N,), lam): targets lam t + (1-lam) t[perm] (module doc).
    """
    n = logits.size  # N, or N*T for multi-label: the loss is the mean over every value
    t = np.asarray(y).reshape(logits.shape).astype(logits.dtype, copy=False)
    if mix is not None:
        perm, lam = mix
        t = t * t.dtype.type(lam) + t[np.asarray(perm)] * t.dtype.type(1.0 - lam)
    z64 = logits.astype(np.float64)
    loss = float(np.mean(np.maximum(z64, 0) - z64 * t + np.log1p(np.exp(-np.abs(z64)))))
    if not grad:
        return loss, None
    d = stable_sigmoid(logits, _out(out, logits))
    d -= t
    d *= d.dtype.type(1.0 / n)
    return loss, d


def mse(outputs: np.ndarray, y: np.ndarray, out: np.ndarray | None = None,
        grad: bool = True) -> tuple[float, np.ndarray | None]:
    """outputs (N, K), y (N, K) (or (N,) when K = 1) -> (mean over all N*K of (o - t)^2, doutputs)."""
    t = np.asarray(y).reshape(outputs.shape)
    d = np.subtract(outputs, t, out=_out(out, outputs), casting="unsafe")
    loss = float(np.mean(np.square(d, dtype=np.float64)))
    if not grad:
        return loss, None
    d *= d.dtype.type(2.0 / d.size)
    return loss, d


LOSSES = {"cross_entropy": softmax_cross_entropy, "binary_cross_entropy": binary_cross_entropy, "mse": mse}


def loss_function(step: Any) -> Callable[..., tuple[float, np.ndarray | None]]:
    """The loss of an IR ``loss`` statement (:class:`dnnspec.ir.Step`) with its options bound (label_smoothing)."""
    fn = LOSSES[step.kind]
    opts = {k: v for k, v in dict(getattr(step, "options", None) or {}).items() if v}
    return partial(fn, **opts) if opts else fn
