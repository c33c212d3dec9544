"""Compiled optimizer steps: each weight, its moments and its squared-gradient state in one pass per element.

Imported only through :mod:`dnnspec.engine.fused`, when numba is installed (the ``fast``
extra) and a training run builds an optimizer; ``dnnspec check`` never imports it. Its
:func:`jit` also compiles the elementwise training kernels that sit beside their ops in
ops.py (:func:`dnnspec.engine.fused.compiled`).

Every kernel has the form ``kernel(w, g, *state, c)``: ``w`` the weights, ``g`` their
gradient, ``state`` the optimizer's slots (``v``; ``s``; ``m, s``), all 1-D contiguous
arrays of one float dtype, updated in place; ``c`` (same dtype) holds the scalars::

    c[0] clip scale (1: none)   c[1] l2 decay (0: none)   c[2] decoupled keep factor (1: none)
    c[3:]                        the optimizer's own scalars, then each slot's flush floor
                                 (0: no flush this step; see Optimizer.flush_floors)

Per element, with the front shared by all:  g <- g*scale (+ l2*w);  w <- w*keep - direction.
Each line performs the NumPy path's operations in its order, in the array dtype (no
fastmath, so no reassociation and no fused multiply-add), so the two paths agree to the
bit; ``error_model="numpy"`` gives IEEE division (inf/nan, no ZeroDivisionError check),
which is also what lets LLVM vectorise the loops. ``nogil``: the engine may run pieces of
one step on its own threads (conv nets, engine/threads.py).
"""

from __future__ import annotations

import numba
import numpy as np


def jit(fn):
    """numba.njit with an on-disk cache (the second start compiles nothing), without where none is writable."""
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)
    except RuntimeError:  # "no locator available": neither __pycache__ nor a user cache folder is writable
        return numba.njit(nogil=True, error_model="numpy")(fn)


_inline = numba.njit(inline="always", error_model="numpy")


@_inline
def _grad(g, w, scale, l2):
    """The effective gradient: clipped, then ``+ l2*w`` (l2 decay; skipped, not multiplied, when 0)."""
    gi = g * scale
    if l2 != 0:
        gi = gi + l2 * w
    return gi


@_inline
def _flushed(x, floor):
    """``x``, or +0 where ``|x| < floor`` (as np.putmask in the NumPy path; NaN stays NaN)."""
    return x - x if abs(x) < floor else x  # x - x: a +0 of x's dtype (|x| < floor means x is finite)


@jit
def sgd(w, g, c):
    """c[3] = lr:  w <- w*keep - lr*g."""
    scale, l2, keep, lr = c[0], c[1], c[2], c[3]
    for i in range(w.size):
        wi = w[i]
        w[i] = wi * keep - _grad(g[i], wi, scale, l2) * lr


@jit
def momentum(w, g, v, c):
    """c[3:7] = lr, mu, nesterov (0/1), floor(v):  v <- mu*v + g;  w <- w*keep - lr*(v or g + mu*v)."""
    scale, l2, keep, lr, mu, nesterov, floor = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    for i in range(w.size):
        wi = w[i]
        gi = _grad(g[i], wi, scale, l2)
        vi = v[i] * mu + gi
        d = (vi * mu + gi) * lr if nesterov != 0 else vi * lr
        w[i] = wi * keep - d
        v[i] = _flushed(vi, floor)


@jit
def root(w, g, s, c):
    """AdaGrad and RMSProp. c[3:9] = lr, beta, 1-beta, eps, decaying (0: AdaGrad's sum), floor(s).

    s <- s + g*g (AdaGrad) or beta*s + (1-beta)*g*g (RMSProp);  w <- w*keep - lr * g / sqrt(s + eps).
    """
    scale, l2, keep, lr, beta, a, eps, decaying, floor = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    for i in range(w.size):
        wi = w[i]
        gi = _grad(g[i], wi, scale, l2)
        sq = gi * gi
        si = s[i] * beta + sq * a if decaying != 0 else s[i] + sq
        w[i] = wi * keep - (gi / np.sqrt(si + eps)) * lr
        s[i] = _flushed(si, floor)


@jit
def adam(w, g, m, s, c):
    """c[3:11] = b1, 1-b1, b2, 1-b2, eps*c2, lr*sqrt(c2)/c1, floor(m), floor(s)  (c_i = 1 - b_i^t).

    m <- b1*m + (1-b1)*g;  s <- b2*s + (1-b2)*g*g;  w <- w*keep - (lr*sqrt(c2)/c1) * m / sqrt(s + eps*c2),
    which is w - lr * m_hat / sqrt(s_hat + eps) with m_hat, s_hat never stored.
    """
    scale, l2, keep, b1, a1, b2, a2 = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    eps, step, floor_m, floor_s = c[7], c[8], c[9], c[10]
    for i in range(w.size):
        wi = w[i]
        gi = _grad(g[i], wi, scale, l2)
        mi = m[i] * b1 + gi * a1
        si = s[i] * b2 + (gi * gi) * a2
        w[i] = wi * keep - (mi / np.sqrt(si + eps)) * step
        m[i] = _flushed(mi, floor_m)
        s[i] = _flushed(si, floor_s)



@jit
def adam_amsgrad(w, g, m, s, v, c):
    """Adam with amsgrad: c[3:12] = b1, 1-b1, b2, 1-b2, eps*c2, lr*sqrt(c2)/c1, floor(m), floor(s), floor(v).

    As :func:`adam`, plus v <- max(v, s) (before s is flushed) and v in place of s under the root:
    w <- w*keep - (lr*sqrt(c2)/c1) * m / sqrt(v + eps*c2).
    """
    scale, l2, keep, b1, a1, b2, a2 = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    eps, step, floor_m, floor_s, floor_v = c[7], c[8], c[9], c[10], c[11]
    for i in range(w.size):
        wi = w[i]
        gi = _grad(g[i], wi, scale, l2)
        mi = m[i] * b1 + gi * a1
        si = s[i] * b2 + (gi * gi) * a2
        vi = np.maximum(v[i], si)  # NaN-propagating, as the NumPy path
        w[i] = wi * keep - (mi / np.sqrt(vi + eps)) * step
        m[i] = _flushed(mi, floor_m)
        s[i] = _flushed(si, floor_s)
        v[i] = _flushed(vi, floor_v)

VERSION = numba.__version__
