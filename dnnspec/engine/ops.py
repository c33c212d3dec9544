"""Engine ops for dense layers, activations, batch norm, dropout and flatten.

Each op follows :mod:`dnnspec.engine.base`: ``forward`` keeps what ``backward``
needs, ``backward`` writes parameter gradients into ``grads`` (overwriting, into the
arrays already there when their shape fits) and returns ``dx``. Formulas are the
lecture's; see ``docs/engine.md``.

Outputs live in per-op buffers reused while the batch shape repeats, so one training
step allocates almost nothing: the array a ``forward`` or ``backward`` returns is
valid until the op's next call (copy it to keep it). No op writes into its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import registry
from . import fused, threads
from .base import Op, grad_out, register
from .threads import matmul, parallel


class BufferedOp(Op):
    """An op with named scratch arrays (``self.buf``, see base.Scratch) reused across calls."""


def channel_shape(param_size: int, ndim: int) -> tuple[int, ...]:
    """Broadcast shape of a per-layer (size 1) or per-channel (size C) array on an ndim-array, axis 1."""
    if param_size == 1:
        return (1,)
    return (1, param_size) + (1,) * (ndim - 2)


def reduce_axes(param_size: int, ndim: int) -> tuple[int, ...]:
    """Axes summed to get the gradient of a per-layer or per-channel (axis 1) parameter."""
    if param_size == 1:
        return tuple(range(ndim))
    return (0,) + tuple(range(2, ndim))


def _channel_dot(a: np.ndarray, b: np.ndarray, axis: int = 1) -> np.ndarray:
    """sum over every axis but ``axis`` of a * b, without writing the product: -> (C,)."""
    letters = "abcdefgh"[:a.ndim]
    return np.einsum(f"{letters},{letters}->{letters[axis % a.ndim]}", a, b)


def _per_channel_piece(channel_axis: int):
    """For threads.parallel pieces along axis 0: a per-channel broadcast array's part for rows lo..hi-1.

    When axis 0 is the channel axis each piece takes its own channels; otherwise every
    piece uses the whole (broadcast) array.
    """
    if channel_axis == 0:
        return lambda arr, lo, hi: arr[lo:hi]
    return lambda arr, lo, hi: arr


def training_kernel(fn: Any, training: bool, *arrays: np.ndarray) -> Any:
    """The compiled ``fn`` for a training pass over C-contiguous ``arrays``, else None (the NumPy passes).

    Elementwise kernels (plain loops, written beside the op they speed up) run only in
    training passes, with numba installed and ``$DNNSPEC_FUSED`` not 0 (engine/fused.py);
    evaluation, export and serving never import numba. Each kernel does its NumPy
    passes' operations, so both give the same bits.
    """
    if not training or not all(a.flags.c_contiguous for a in arrays):
        return None
    return fused.compiled(fn)


def _flat_pieces(kernel: Any, *arrays: np.ndarray) -> None:
    """kernel(a[lo:hi].reshape(-1), ...) over pieces of axis 0 (threads.parallel): rows are contiguous runs."""
    first = arrays[0]
    parallel(lambda lo, hi: kernel(*[a[lo:hi].reshape(-1) for a in arrays]), len(first), first.size)


def _reduce_to(g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Sum ``g`` (N, C, ...) to ``out`` of shape (1,) or (C,)."""
    np.sum(g, axis=reduce_axes(out.size, g.ndim), out=out.reshape(()) if out.size == 1 else out)
    return out


# --- dense ------------------------------------------------------------------------


@register("dense")
class Dense(BufferedOp):
    """y = x W + b.  x (N, in), W (in, units), b (units,), y (N, units).

    Backward: dW = x^T dy, db = sum_n dy, dx = dy W^T (one GEMM each; dx skipped when
    ``need_dx`` is False).
    """

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.k = self.key("kernel")
        self.b = self.key("bias") if self.opts.get("bias", True) else None

    def forward(self, x, params, training, rng):
        w = params[self.k]
        self.x = x
        y = matmul(x, w, self.buf("y", (x.shape[0], w.shape[1])))
        if self.b is not None:
            y += params[self.b]
        return y

    def backward(self, dy, params, grads):
        w = params[self.k]
        matmul(self.x.T, dy, grad_out(grads, self.k, w))
        if self.b is not None:
            np.sum(dy, axis=0, out=grad_out(grads, self.b, params[self.b]))
        if not self.need_dx:
            return None
        return matmul(dy, w.T, self.buf("dx", self.x.shape))


# --- activations ------------------------------------------------------------------


def relu_kernel(x, y):
    """y = max(x, 0) over flat arrays, as np.maximum: +0 for x <= 0 (and for -0), NaN kept."""
    for i in range(x.size):
        xi = x[i]
        if xi > 0 or xi != xi:
            y[i] = xi
        else:
            y[i] = 0


def relu_grad_kernel(dy, y, dx):
    """dx = dy * [y > 0] over flat arrays, as dy times the mask cast to 1.0 / 0.0 (so -0 for negative dy)."""
    for i in range(dy.size):
        d = dy[i]
        dx[i] = d if y[i] > 0 else d * 0


@register("relu")
class ReLU(BufferedOp):
    """y = max(0, x); dx = dy * [y > 0]. In training, one compiled pass each (relu_kernel, relu_grad_kernel):
    NumPy's maximum and the bool-to-float multiply are several times slower than a plain pass."""

    def forward(self, x, params, training, rng):
        y = self.y = self.buf("y", x.shape)
        kernel = self.compiled = training_kernel(relu_kernel, training, x)
        if kernel is not None:
            _flat_pieces(kernel, x, y)
        else:
            parallel(lambda lo, hi: np.maximum(x[lo:hi], 0, out=y[lo:hi]), len(x), x.size)
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        y, dx = self.y, self.buf("dx", dy.shape)
        kernel = training_kernel(relu_grad_kernel, self.compiled is not None, dy, y)
        if kernel is not None:
            _flat_pieces(kernel, dy, y, dx)
            return dx
        mask = self.buf("mask", dy.shape, np.bool_)

        def piece(lo: int, hi: int) -> None:
            np.greater(y[lo:hi], 0, out=mask[lo:hi])
            np.multiply(dy[lo:hi], mask[lo:hi], out=dx[lo:hi])

        parallel(piece, len(dy), dy.size)
        return dx


class _AlphaOp(BufferedOp):
    """Leaky ReLU and ELU: y = max(x, 0) + alpha g(min(x, 0)), alpha constant or learned.

    With m = min(x, 0): dalpha = sum dy g(m) (per layer or per channel) and
    dx = dy * (1 if x >= 0 else alpha g'(m)). Subclasses give g (in place) and g'.
    """

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.learn = bool(self.opts.get("learn", False))
        self.ka = self.key("alpha")

    def alpha(self, params: dict[str, np.ndarray], ndim: int) -> Any:
        """alpha broadcastable to the input: a float, or (1,) / (1, C, 1, 1) / (1, F)."""
        if not self.learn:
            return self.dtype.type(self.opts["alpha"])
        a = params[self.ka]
        return a.reshape(channel_shape(a.size, ndim))

    def g(self, m: np.ndarray) -> np.ndarray:
        """The negative part g(m), computed in place on m = min(x, 0)."""
        raise NotImplementedError

    def dg(self, g: np.ndarray, out: np.ndarray) -> np.ndarray:
        """g'(m) written into ``out``, from g(m)."""
        raise NotImplementedError

    #: g'(m) = g(m) + 1 (ELU) rather than 1 (leaky ReLU): tells alpha_grad_kernel which slope to take.
    slope_from_g = False

    def forward(self, x, params, training, rng):
        a = self.alpha(params, x.ndim)
        neg, pos, y = self.buf("neg", x.shape), self.buf("pos", x.shape, np.bool_), self.buf("y", x.shape)
        self.neg, self.pos = neg, pos
        self.compiled = None if self.learn else training_kernel(min_kernel, training, x)
        if self.compiled is not None:  # compiled passes around NumPy's g: min; g; then y and the mask together
            _flat_pieces(self.compiled, x, neg)
            self.g(neg)
            kernel, c = fused.compiled(alpha_kernel), self._constants(a)
            _flat_pieces(lambda xs, ns, ys, ps: kernel(xs, ns, c, ys, ps), x, neg, y, pos)
            return y
        self.g(np.minimum(x, 0, out=neg))
        np.greater_equal(x, 0, out=pos)
        np.multiply(neg, a, out=y)
        y += np.maximum(x, 0, out=self.buf("tmp", x.shape))
        return y

    def _constants(self, a: Any) -> np.ndarray:
        """[alpha, 1, 0] in the net's dtype: the kernels' scalars (a plain 1 or 0 would compute in float64)."""
        return np.array([a, 1, 0], self.dtype)

    def backward(self, dy, params, grads):
        if self.learn:
            prod = np.multiply(dy, self.neg, out=self.buf("tmp", dy.shape))
            _reduce_to(prod, grad_out(grads, self.ka, params[self.ka]))
        if not self.need_dx:
            return None
        dx = self.buf("dx", dy.shape)
        kernel = training_kernel(alpha_grad_kernel, self.compiled is not None, dy)
        if kernel is not None:
            c, from_g = self._constants(self.alpha(params, dy.ndim)), self.slope_from_g
            _flat_pieces(lambda d, n, p, o: kernel(d, n, p, c, from_g, o), dy, self.neg, self.pos, dx)
            return dx
        slope = self.dg(self.neg, self.buf("slope", dy.shape))
        slope *= self.alpha(params, dy.ndim)
        np.copyto(slope, 1, where=self.pos)
        return np.multiply(dy, slope, out=dx)


def min_kernel(x, m):
    """m = min(x, 0) over flat arrays, as np.minimum: +0 for x >= 0 (and for -0), NaN kept."""
    for i in range(x.size):
        xi = x[i]
        if xi < 0 or xi != xi:
            m[i] = xi
        else:
            m[i] = 0


def alpha_kernel(x, neg, c, y, pos):
    """y = neg*alpha + max(x, 0) and pos = [x >= 0] over flat arrays; neg = g(min(x, 0)), c = [alpha, 1, 0]."""
    a, zero = c[0], c[2]
    for i in range(x.size):
        xi = x[i]
        if xi > 0 or xi != xi:
            y[i] = neg[i] * a + xi
        else:
            y[i] = neg[i] * a + zero
        pos[i] = xi >= 0


def alpha_grad_kernel(dy, neg, pos, c, from_g, dx):
    """dx = dy * slope: 1 where pos, else g'(m)*alpha = (neg + 1)*alpha (ELU, from_g) or 1*alpha (leaky)."""
    a, one = c[0], c[1]
    for i in range(dy.size):
        if pos[i]:
            dx[i] = dy[i] * one
        elif from_g:
            dx[i] = dy[i] * ((neg[i] + one) * a)
        else:
            dx[i] = dy[i] * (one * a)


@register("leaky_relu")
class LeakyReLU(_AlphaOp):
    """y = x if x >= 0 else alpha x: g(m) = m, g'(m) = 1; learned alpha is PReLU."""

    def g(self, m):
        return m

    def dg(self, g, out):
        out.fill(1)
        return out


@register("elu")
class ELU(_AlphaOp):
    """y = x if x >= 0 else alpha (e^x - 1): g(m) = expm1(m), g'(m) = e^m = g(m) + 1."""

    slope_from_g = True

    def g(self, m):
        return np.expm1(m, out=m)

    def dg(self, g, out):
        return np.add(g, 1, out=out)


def stable_sigmoid(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow: e = exp(-|x|); x >= 0: 1/(1+e), else e/(1+e)."""
    e = np.abs(x, out=out)
    np.negative(e, out=e)
    np.exp(e, out=e)
    num = np.where(x >= 0, 1, e)
    e += 1
    return np.divide(num, e, out=out)


@register("softplus")
class Softplus(BufferedOp):
    """y = log(1 + e^x) = max(x, 0) + log1p(e^-|x|) (stable); dx = dy * sigmoid(x)."""

    def forward(self, x, params, training, rng):
        self.x = x
        y = np.abs(x, out=self.buf("y", x.shape))
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.log1p(y, out=y)
        y += np.maximum(x, 0, out=self.buf("tmp", x.shape))
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        s = stable_sigmoid(self.x, self.buf("tmp", dy.shape))
        return np.multiply(dy, s, out=self.buf("dx", dy.shape))


@register("sigmoid")
class Sigmoid(BufferedOp):
    """y = 1 / (1 + e^-x) (stable form); dx = dy * y (1 - y)."""

    def forward(self, x, params, training, rng):
        self.y = stable_sigmoid(x, self.buf("y", x.shape))
        return self.y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        d = np.subtract(1, self.y, out=self.buf("dx", dy.shape))
        d *= self.y
        d *= dy
        return d


@register("tanh")
class Tanh(BufferedOp):
    """y = tanh(x); dx = dy * (1 - y^2)."""

    def forward(self, x, params, training, rng):
        self.y = np.tanh(x, out=self.buf("y", x.shape))
        return self.y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        d = np.multiply(self.y, self.y, out=self.buf("dx", dy.shape))
        np.subtract(1, d, out=d)
        d *= dy
        return d


@register("softmax")
class Softmax(BufferedOp):
    """y_i = e^(x_i - max x) / sum_j e^(x_j - max x) over the last axis (N, K).

    dx = y * (dy - sum_j dy_j y_j). The network fuses a final softmax with the
    cross-entropy (see losses.py), so this backward only runs when it is not final.
    """

    def forward(self, x, params, training, rng):
        y = np.subtract(x, x.max(axis=-1, keepdims=True), out=self.buf("y", x.shape))
        np.exp(y, out=y)
        y /= y.sum(axis=-1, keepdims=True)
        self.y = y
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        d = np.multiply(dy, self.y, out=self.buf("dx", dy.shape))
        dot = d.sum(axis=-1, keepdims=True)
        np.subtract(dy, dot, out=d)
        d *= self.y
        return d


# --- gelu, silu, selu -------------------------------------------------------------


def _erf_table(width: float = 0.25, top: float = 6.0, degree: int = 12) -> tuple[np.ndarray, float]:
    """Power-series coefficients (pieces, degree+1) of erf on [k*width, (k+1)*width], in t in [-1, 1].

    Chebyshev interpolants of ``math.erf`` built once at import: |error| < 2e-15 on [0, 6]
    (tests/test_layers_modern.py checks it against math.erf); beyond 6, erf = 1 in float64.
    """
    import math

    from numpy.polynomial import Chebyshev
    from numpy.polynomial.chebyshev import cheb2poly

    exact = np.vectorize(math.erf)
    rows = []
    for k in range(int(round(top / width))):
        cheb = Chebyshev.interpolate(exact, degree, domain=[k * width, (k + 1) * width])
        rows.append(cheb2poly(cheb.coef))  # powers of t, the interval mapped onto [-1, 1]
    return np.array(rows), width


_ERF, _ERF_WIDTH = _erf_table()
_ERF_T = np.ascontiguousarray(_ERF.T)


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x), vectorised, in x's dtype (NumPy has none): a piecewise degree-12 polynomial of |x|, odd.

    Each piece k covers |x| in [k w, (k+1) w), t = 2 (|x| - (k + 1/2) w) / w; Horner over
    the gathered coefficients. Float64 error below 2e-15.
    """
    a = np.minimum(np.abs(x, dtype=np.float64), _ERF.shape[0] * _ERF_WIDTH - 1e-12)
    k = (a / _ERF_WIDTH).astype(np.intp)
    t = 2.0 * (a - (k + 0.5) * _ERF_WIDTH) / _ERF_WIDTH
    c = np.take(_ERF_T, k, axis=1)  # (13, ...): each coefficient's values in one contiguous row
    r = c[-1]
    for j in range(c.shape[0] - 2, -1, -1):
        r *= t
        r += c[j]
    return np.copysign(r, x).astype(x.dtype, copy=False)


_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@register("gelu")
class GELU(BufferedOp):
    """y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2 (the exact form, not the tanh approximation).

    dx = dy (Phi(x) + x phi(x)), phi(x) = e^(-x^2/2) / sqrt(2 pi).
    """

    def forward(self, x, params, training, rng):
        self.x = x
        phi = self.phi = self.buf("Phi", x.shape)
        np.multiply(erf(x * self.dtype.type(_INV_SQRT2)), 0.5, out=phi)
        phi += self.dtype.type(0.5)
        return np.multiply(x, phi, out=self.buf("y", x.shape))

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        x = self.x
        d = np.multiply(x, x, out=self.buf("dx", dy.shape))
        d *= self.dtype.type(-0.5)
        np.exp(d, out=d)
        d *= self.dtype.type(_INV_SQRT_2PI)
        d *= x
        d += self.phi
        d *= dy
        return d


@register("silu")
class SiLU(BufferedOp):
    """y = x s, s = sigmoid(x) (swish); dx = dy s (1 + x (1 - s))."""

    def forward(self, x, params, training, rng):
        self.x = x
        self.s = stable_sigmoid(x, self.buf("s", x.shape))
        return np.multiply(x, self.s, out=self.buf("y", x.shape))

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        d = np.subtract(1, self.s, out=self.buf("dx", dy.shape))
        d *= self.x
        d += 1
        d *= self.s
        d *= dy
        return d


SELU_ALPHA, SELU_LAMBDA = registry.SELU_ALPHA, registry.SELU_LAMBDA


@register("selu")
class SELU(BufferedOp):
    """y = lambda x (x > 0), lambda alpha (e^x - 1) (x <= 0); Klambauer et al.'s fixed alpha and lambda.

    dx = dy lambda (x > 0), dy (y + lambda alpha) (x <= 0).
    """

    def forward(self, x, params, training, rng):
        self.x = x
        y = self.y = np.minimum(x, 0, out=self.buf("y", x.shape))
        np.expm1(y, out=y)
        y *= self.dtype.type(SELU_ALPHA)
        np.copyto(y, x, where=x > 0)
        y *= self.dtype.type(SELU_LAMBDA)
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        d = np.add(self.y, self.dtype.type(SELU_LAMBDA * SELU_ALPHA), out=self.buf("dx", dy.shape))
        np.copyto(d, self.dtype.type(SELU_LAMBDA), where=self.x > 0)
        d *= dy
        return d


# --- batch norm -------------------------------------------------------------------


@register("batchnorm")
class BatchNorm(BufferedOp):
    """Batch norm per feature on (N, F) or per channel on (N, C, H, W); m = values per channel.

    Training: mu = mean x, var = mean (x - mu)^2 (biased, the lecture's), xhat =
    (x - mu) / sqrt(var + eps), y = gamma xhat + beta; then, Keras's convention,
    running = momentum * running + (1 - momentum) * batch, with the same biased var.
    Evaluation: y = gamma (x - running_mean) / sqrt(running_var + eps) + beta.

    Backward (training, fused): dbeta = sum dy, dgamma = sum dy xhat,
    dx = gamma / sqrt(var + eps) * (dy - dbeta/m - xhat dgamma/m).
    """

    #: Axis of the channels (features) in what forward receives: 1 for (N, F) and NCHW; a
    #: conv feeding a max pool through this op (Conv2D.feed_pool) makes it 0 for its
    #: window-major (C, M) ("unfold") or -1 for (N, kk, P, C) ("rows").
    channel_axis = 1
    layout: str | None = None  # the window-major layout passed through, for the pool

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.kg, self.kb = self.key("gamma"), self.key("beta")
        self.km, self.kv = self.key("running_mean"), self.key("running_var")
        self.momentum = float(self.opts["momentum"])
        self.eps = float(self.opts["eps"])

    def pass_through(self, conv: Any, pool: Any) -> None:
        """Normalise ``conv``'s window-major output on its way to ``pool`` (see Conv2D.feed_pool)."""
        self.layout = conv.layout
        self.channel_axis = 0 if conv.layout == "unfold" else -1
        self.grid = pool.out_hw

    def finish(self, ynhwc: np.ndarray, params) -> np.ndarray:
        """("rows") the pool's maxima (N, P, C) -> (N, C, gh, gw) NCHW: one transposing copy."""
        n, c = ynhwc.shape[0], ynhwc.shape[2]
        y = self.buf("y_nchw", (n, c) + self.grid)
        threads.copy(y.reshape(n, c, -1), ynhwc.transpose(0, 2, 1))
        return y

    def _geometry(self, x: np.ndarray, c: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(broadcast shape of a per-channel array, the axes summed over, the channel axis)."""
        ax = self.channel_axis % x.ndim
        cs = [1] * x.ndim
        cs[ax] = c
        return tuple(cs), tuple(i for i in range(x.ndim) if i != ax), ax

    def forward(self, x, params, training, rng):
        c = params[self.kg].size
        cs, axes, ax = self._geometry(x, c)
        gamma, beta = params[self.kg].reshape(cs), params[self.kb].reshape(cs)
        self.training, self.cs, self.axes, self.ax = training, cs, axes, ax
        if not training:
            self.x = x
            self.scale = gamma / np.sqrt(params[self.kv].reshape(cs) + self.eps)
            y = np.subtract(x, params[self.km].reshape(cs), out=self.buf("y", x.shape))
            y *= self.scale
            y += beta
            return y
        m = x.size // c
        mu = np.add.reduce(x, axis=axes, keepdims=True) / m
        xc = self.xc = self.buf("xc", x.shape)  # x - mu, kept for backward
        var = np.empty(c, self.dtype)
        pc = _per_channel_piece(ax)

        def center(lo: int, hi: int) -> None:
            np.subtract(x[lo:hi], pc(mu, lo, hi), out=xc[lo:hi])

        parallel(center, len(x), x.size)
        var[...] = _channel_dot(xc, xc, ax) / m  # two passes, as the lecture: mean, then mean of squares
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        self._update_running(params, mu.reshape(-1), var)
        scale = (gamma.reshape(-1) * self.inv_std).reshape(cs)
        y = self.buf("y", x.shape)
        kernel = self.compiled = training_kernel(bn_kernel, True, xc)
        if kernel is not None:  # y = xc*scale + beta in one pass
            _channel_pieces(kernel, (xc, y), (scale.reshape(-1), beta.reshape(-1)), ax)
            return y

        def normalise(lo: int, hi: int) -> None:
            np.multiply(xc[lo:hi], pc(scale, lo, hi), out=y[lo:hi])
            y[lo:hi] += pc(beta, lo, hi)

        parallel(normalise, len(x), x.size)
        return y

    def _update_running(self, params: dict[str, np.ndarray], mu: np.ndarray, var: np.ndarray) -> None:
        """running = momentum * running + (1 - momentum) * batch, in place."""
        m = self.momentum
        for key, batch in ((self.km, mu), (self.kv, var)):
            r = params[key]
            r *= m
            r += (1.0 - m) * batch

    def backward(self, dy, params, grads):
        if self.layout is not None:  # window-major from the pool: its blocks, our input's shape
            dy = dy.reshape((self.xc if self.training else self.x).shape)
        if not self.training:
            return self._backward_eval(dy, params, grads)
        # With xc = x - mu and s = 1/sqrt(var + eps) per channel (xhat = xc s):
        #   dbeta = sum dy,  dgamma = s sum(dy xc),
        #   dx = gamma s (dy - dbeta/m - xhat dgamma/m) = a dy + b xc + c0,
        #   a = gamma s,  b = -a s^2 sum(dy xc) / m,  c0 = -a dbeta / m.
        gamma = params[self.kg].reshape(-1)
        xc, s = self.xc, self.inv_std
        dbeta = np.add.reduce(dy, axis=self.axes)
        dyxc = _channel_dot(dy, xc, self.ax)
        grad_out(grads, self.kb, params[self.kb])[...] = dbeta
        grad_out(grads, self.kg, params[self.kg])[...] = s * dyxc
        if not self.need_dx:
            return None
        m = dy.size // gamma.size
        a = gamma * s
        b = (-a * s * s * dyxc / m).astype(self.dtype).reshape(self.cs)
        c0 = (-a * dbeta / m).astype(self.dtype).reshape(self.cs)
        a = a.astype(self.dtype).reshape(self.cs)
        dx = self.buf("dx", dy.shape)
        kernel = training_kernel(bn_grad_kernel, self.compiled is not None, dy)
        if kernel is not None:  # dx = dy*a + xc*b + c0 in one pass
            _channel_pieces(lambda d, x_, o, a_, b_, c_: kernel(d, x_, a_, b_, c_, o),
                            (dy, xc, dx), (a.reshape(-1), b.reshape(-1), c0.reshape(-1)), self.ax)
            return dx
        tmp = self.buf("tmp", dy.shape)
        pc = _per_channel_piece(self.ax)

        def piece(lo: int, hi: int) -> None:
            d = dx[lo:hi]
            np.multiply(dy[lo:hi], pc(a, lo, hi), out=d)
            d += np.multiply(xc[lo:hi], pc(b, lo, hi), out=tmp[lo:hi])
            d += pc(c0, lo, hi)

        parallel(piece, len(dy), dy.size)
        return dx

    def _backward_eval(self, dy, params, grads):
        """Evaluation mode is y = scale (x - running_mean) + beta per channel, scale = gamma/sqrt(rv+eps)."""
        xn = np.subtract(self.x, params[self.km].reshape(self.cs), out=self.buf("tmp", dy.shape))
        xn /= np.sqrt(params[self.kv].reshape(self.cs) + self.eps)
        xn *= dy
        grad_out(grads, self.kg, params[self.kg])[...] = xn.sum(axis=self.axes).reshape(-1)
        grad_out(grads, self.kb, params[self.kb])[...] = dy.sum(axis=self.axes).reshape(-1)
        if not self.need_dx:
            return None
        return np.multiply(dy, self.scale, out=self.buf("dx", dy.shape))


def _channel_pieces(kernel: Any, arrays: tuple[np.ndarray, ...], per_channel: tuple[np.ndarray, ...],
                    axis: int = 1) -> None:
    """kernel(*arrays as (n, C, rest) views, *per_channel (C,) arrays) over pieces, on the engine's threads.

    ``axis``: where the channels are. 1 (NCHW, or (N, F)): pieces of the examples. 0 (a
    conv's window-major (C, M) blocks, Conv2D.feed_pool): pieces of the channels, each
    (1, c, M). Last (the "rows" blocks (N, kk, P, C)): pieces of the rows of C values,
    each (rows, C, 1).
    """
    first = arrays[0]
    c = per_channel[0].size
    if axis == 0:
        parallel(lambda lo, hi: kernel(*[a[lo:hi].reshape(1, hi - lo, -1) for a in arrays],
                                       *[p[lo:hi] for p in per_channel]), c, first.size)
        return
    if axis != 1:
        arrays = tuple(a.reshape(-1, c) for a in arrays)
    n = len(arrays[0])
    parallel(lambda lo, hi: kernel(*[a[lo:hi].reshape(hi - lo, c, -1) for a in arrays], *per_channel),
             n, first.size)


def bn_kernel(xc, y, scale, beta):
    """y = xc*scale + beta per channel; xc, y (N, C, R) with the channels on axis 1, scale and beta (C,)."""
    n, c, r = xc.shape
    if r == 1:  # (N, F): loop over features innermost, so that it vectorises
        x2, y2 = xc.reshape(n, c), y.reshape(n, c)
        for i in range(n):
            for j in range(c):
                y2[i, j] = x2[i, j] * scale[j] + beta[j]
        return
    for i in range(n):
        for j in range(c):
            s, b = scale[j], beta[j]
            for k in range(r):
                y[i, j, k] = xc[i, j, k] * s + b


def bn_grad_kernel(dy, xc, a, b, c0, dx):
    """dx = (dy*a + xc*b) + c0 per channel (BatchNorm.backward's a, b, c0, each (C,)); arrays (N, C, R)."""
    n, c, r = dy.shape
    if r == 1:
        d2, x2, o2 = dy.reshape(n, c), xc.reshape(n, c), dx.reshape(n, c)
        for i in range(n):
            for j in range(c):
                o2[i, j] = (d2[i, j] * a[j] + x2[i, j] * b[j]) + c0[j]
        return
    for i in range(n):
        for j in range(c):
            aj, bj, cj = a[j], b[j], c0[j]
            for k in range(r):
                dx[i, j, k] = (dy[i, j, k] * aj + xc[i, j, k] * bj) + cj


# --- layer norm -------------------------------------------------------------------


@register("layernorm")
class LayerNorm(BufferedOp):
    """Layer norm per example over its m features: (N, F) over F, (N, C, H, W) over C, H and W.

    mu_n = mean x_n, var_n = mean (x_n - mu_n)^2 (biased), xhat = (x - mu) / sqrt(var + eps),
    y = gamma xhat + beta with gamma, beta per feature (F,) or per channel (C,), broadcast over
    H and W. Training and evaluation compute the same (no running statistics).

    Backward: dbeta = sum_{n,h,w} dy, dgamma = sum_{n,h,w} dy xhat; with g = dy gamma,
    dx = (g - mean g - xhat mean(g xhat)) / sqrt(var + eps), the means over each example's m features.
    """

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.eps = float(self.opts["eps"])
        self.g, self.b = self.key("gamma"), self.key("beta")

    def forward(self, x, params, training, rng):
        axes = tuple(range(1, x.ndim))
        shape = channel_shape(params[self.g].size, x.ndim)
        xhat = np.subtract(x, x.mean(axis=axes, keepdims=True, dtype=self.dtype), out=self.buf("xhat", x.shape))
        var = np.mean(np.square(xhat, out=self.buf("y", x.shape)), axis=axes, keepdims=True, dtype=self.dtype)
        self.inv = 1.0 / np.sqrt(var + self.dtype.type(self.eps))
        xhat *= self.inv
        self.xhat = xhat
        y = np.multiply(xhat, params[self.g].reshape(shape), out=self.buf("y", x.shape))
        y += params[self.b].reshape(shape)
        return y

    def backward(self, dy, params, grads):
        gamma = params[self.g]
        axes = tuple(range(1, dy.ndim))
        xhat = self.xhat
        np.copyto(grad_out(grads, self.g, gamma), _channel_dot(dy, xhat) if dy.ndim > 2 else
                  np.einsum("nf,nf->f", dy, xhat))
        _reduce_to(dy, grad_out(grads, self.b, params[self.b]))
        if not self.need_dx:
            return None
        g = np.multiply(dy, gamma.reshape(channel_shape(gamma.size, dy.ndim)), out=self.buf("dx", dy.shape))
        mean_gx = _channel_dot(g, xhat, axis=0).reshape((-1,) + (1,) * (dy.ndim - 1)) / np.prod(dy.shape[1:])
        g -= g.mean(axis=axes, keepdims=True, dtype=self.dtype)
        g -= xhat * mean_gx.astype(self.dtype, copy=False)
        g *= self.inv
        return g


# --- dropout and flatten ----------------------------------------------------------


@register("dropout")
class Dropout(BufferedOp):
    """Drop each unit with probability p = rate; q = 1 - p is the keep probability.

    mode inverted: training y = x * mask / q, evaluation y = x.
    mode scale:    training y = x * mask,     evaluation y = x * q (the lecture's
    "multiply the weights by the keep probability after training").
    mask_i ~ Bernoulli(q), drawn from the generator passed to forward.
    channels=true (images): one draw per example and channel, mask (N, C, 1, 1) broadcast
    over H and W, so whole feature maps are dropped (Tompson et al.'s spatial dropout).
    """

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.rate = float(self.opts["rate"])
        self.keep = 1.0 - self.rate
        self.inverted = self.opts.get("mode", "inverted") == "inverted"
        self.channels = bool(self.opts.get("channels", False))

    def forward(self, x, params, training, rng):
        self.training = training
        if not training:
            if self.inverted or self.rate == 0.0:
                return x
            return np.multiply(x, self.dtype.type(self.keep), out=self.buf("y", x.shape))
        if self.rate == 0.0:
            self.mult = None
            return x
        if rng is None:
            raise ValueError(f"{self.name}: dropout in training mode needs a random generator")
        value = self.dtype.type(1.0 / self.keep if self.inverted else 1.0)
        y = self.buf("y", x.shape)
        if self.channels:  # one draw per (example, channel), broadcast over the pixels
            u = rng.random(x.shape[:2] + (1,) * (x.ndim - 2), dtype=self.dtype)
            self.mult = np.multiply(u < self.keep, value, dtype=self.dtype)
            return np.multiply(x, self.mult, out=y)
        u = rng.random(x.shape, dtype=self.dtype, out=self.buf("u", x.shape))
        kernel = self.compiled = training_kernel(dropout_kernel, training, x)
        if kernel is not None:  # the mask, its scaling and the product in one pass
            c = np.array([self.keep, value, 0], self.dtype)
            _flat_pieces(lambda xs, us, ys: kernel(xs, us, c, ys), x, u, y)
            self.mult = u
            return y
        kept = np.less(u, self.keep, out=self.buf("kept", x.shape, np.bool_))
        self.mult = np.multiply(kept, value, out=u)  # mask already scaled: one multiply per pass
        return np.multiply(x, self.mult, out=y)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        if not self.training:
            if self.inverted or self.rate == 0.0:
                return dy
            return np.multiply(dy, self.dtype.type(self.keep), out=self.buf("dx", dy.shape))
        if self.mult is None:
            return dy
        return np.multiply(dy, self.mult, out=self.buf("dx", dy.shape))


def dropout_kernel(x, u, c, y):
    """u <- mult = value if u < keep else 0;  y = x * mult  (flat arrays; c = [keep, value, 0] in x's dtype)."""
    keep, value, zero = c[0], c[1], c[2]
    for i in range(x.size):
        m = value if u[i] < keep else zero
        u[i] = m
        y[i] = x[i] * m


@register("flatten")
class Flatten(Op):
    """(N, C, H, W) -> (N, C*H*W), a view; backward reshapes back."""

    def forward(self, x, params, training, rng):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        return dy.reshape(self.in_shape)
