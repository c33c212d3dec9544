"""Convolution and pooling ops: conv2d, maxpool, avgpool, global_avgpool.

Shapes at the op boundary are NCHW, as everywhere in the engine: ``x`` is
``(N, C, H, W)``, ``dy`` is ``(N, F, OH, OW)``. Inside, the ops work in NHWC, where the
channels of one pixel are contiguous, so that

* im2col is a single strided copy whose innermost runs are ``kw * C`` floats long,
* the convolution is ONE ``(N*OH*OW, kh*kw*C) @ (kh*kw*C, F)`` matrix multiply whose
  ``(N*OH*OW, F)`` result already *is* the NHWC output (no reordering copy), and
* pooling reads and writes contiguous channel vectors.

Outputs (and input gradients) are returned as NCHW-shaped ``transpose`` views of
NHWC memory; the next op's ``x.transpose(0, 2, 3, 1)`` is then free. NumPy's
elementwise ops (ReLU, dropout, batch norm in ``ops.py``) keep the memory order of
their input, so a chain conv -> relu -> maxpool -> conv never reorders memory.

Padding follows ONNX: explicit ``(top, left, bottom, right)`` pads from
:func:`dnnspec.shapes.conv_pads`; ``same`` is SAME_UPPER (the odd pixel goes at the
bottom/right). Sizes that do not divide floor: ``OH = (H + top + bottom - kh) // sh + 1``.

Conventions that tests and the ONNX exporter rely on:

* maxpool: padding acts as ``-inf``; backward routes each window's gradient to ONE
  input, the first maximum in window order (row-major over the ``kh x kw`` offsets,
  as ``np.argmax`` on the flattened window); overlapping windows add up.
* avgpool: padding is not counted (ONNX ``count_include_pad=0``): each output is the
  mean of the real pixels under its window.

Every op reads its parameters from ``params`` in the op's dtype (float32 by default,
float64 for gradient checks). ``op.need_dx = False`` makes ``backward`` return None.
Scratch buffers (the im2col matrix, padded inputs) are kept on the op and reused while
the batch shape repeats; ``forward`` then ``backward`` must pair up, as the trainer
calls them (conv2d's backward reuses the column buffer for the column gradient).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..ir import Layer
from ..shapes import conv_pads
from .base import Op, register


def _nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C) view."""
    return x.transpose(0, 2, 3, 1)


def _nchw(y: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W) view."""
    return y.transpose(0, 3, 1, 2)


def _window_views(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                  out_hw: tuple[int, int]):
    """Yield ``(i, j, view)`` for each kernel offset, view = xp[:, i + sh*r, j + sw*s, :].

    xp: (N, Hp, Wp, C); each view: (N, OH, OW, C), a strided slice (writeable if xp is).
    The loop is over the kh*kw offsets only, in row-major window order.
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]


class _WindowOp(Op):
    """Shared geometry of conv2d and the pools: kernel, stride, pads and buffers."""

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        c, h, w = layer.in_shape
        self.in_chw = (c, h, w)
        self.out_hw = tuple(layer.out_shape[1:])
        self.kernel = tuple(self.opts["kernel"])
        self.stride = tuple(self.opts["stride"])
        self.pads = conv_pads(self.opts, h, w)
        self._pad_buf: np.ndarray | None = None

    def _check(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_chw:
            raise ValueError(f"{self.name}: expected input (N, {', '.join(map(str, self.in_chw))}), "
                             f"got {tuple(x.shape)}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _padded(self, xt: np.ndarray, fill: float) -> np.ndarray:
        """xt: (N, H, W, C) -> (N, H+t+b, W+l+r, C) with ``fill`` in the border.

        The buffer is kept: its border is written once and only the interior is copied
        on later calls with the same batch size. Without padding, xt itself.
        """
        t, left, b, r = self.pads
        if not (t or left or b or r):
            return xt
        n, h, w, c = xt.shape
        shape = (n, h + t + b, w + left + r, c)
        buf = self._pad_buf
        if buf is None or buf.shape != shape or buf.dtype != xt.dtype:
            buf = self._pad_buf = np.full(shape, fill, dtype=xt.dtype)
        np.copyto(buf[:, t:t + h, left:left + w, :], xt)
        return buf

    def _crop(self, dxp: np.ndarray) -> np.ndarray:
        """Undo the padding of a (N, Hp, Wp, C) gradient: (N, H, W, C) view."""
        t, left, _, _ = self.pads
        _, h, w = self.in_chw
        return dxp[:, t:t + h, left:left + w, :]

    def _grad_buffer(self, n: int, dtype: np.dtype) -> np.ndarray:
        """Zeroed (N, Hp, Wp, C) input-gradient array (fresh: the caller keeps it)."""
        c, h, w = self.in_chw
        t, left, b, r = self.pads
        return np.zeros((n, h + t + b, w + left + r, c), dtype=dtype)


@register("conv2d")
class Conv2D(_WindowOp):
    """2-D cross-correlation (what deep learning calls convolution), NCHW in and out.

    x: (N, C, H, W); kernel: (F, C, kh, kw); bias: (F,); y: (N, F, OH, OW)::

        y[n, f, r, s] = bias[f] + sum_{c,i,j} kernel[f, c, i, j] * xp[n, c, r*sh + i, s*sw + j]

    with xp the zero-padded input. As matrices (M = N*OH*OW, K = kh*kw*C):
    ``cols (M, K)`` holds the receptive fields (NHWC order, columns ordered (i, j, c)),
    ``wmat (K, F)`` the kernel, and ``Y = cols @ wmat + bias``. Backward:
    ``dW = cols.T @ dY``, ``db = 1.T @ dY``, ``dcols = dY @ wmat.T`` and dx is col2im of
    dcols: one strided add per kernel offset.
    """

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.filters = layer.out_shape[0]
        self.has_bias = bool(self.opts.get("bias", True))
        self._cols: np.ndarray | None = None
        self._ones: np.ndarray | None = None
        self._cache: tuple | None = None

    def _col_buffer(self, m: int, k: int, dtype: np.dtype) -> np.ndarray:
        if self._cols is None or self._cols.shape != (m, k) or self._cols.dtype != dtype:
            self._cols = np.empty((m, k), dtype=dtype)
        return self._cols

    def _im2col(self, xp: np.ndarray, n: int) -> np.ndarray:
        """xp: (N, Hp, Wp, C) -> cols (N*OH*OW, kh*kw*C), one strided copy into a reused buffer."""
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        c = xp.shape[3]
        if (kh, kw, sh, sw) == (1, 1, 1, 1) and xp.flags.c_contiguous:
            return xp.reshape(n * oh * ow, c)
        cols = self._col_buffer(n * oh * ow, kh * kw * c, xp.dtype)
        s_n, s_h, s_w, s_c = xp.strides
        win = as_strided(xp, (n, oh, ow, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c), writeable=False)
        np.copyto(cols.reshape(n, oh, ow, kh, kw, c), win)
        return cols

    def forward(self, x, params, training, rng):
        """x: (N, C, H, W) -> (N, F, OH, OW) (a transposed view of NHWC memory)."""
        x = self._check(x)
        n = x.shape[0]
        kernel = params[self.key("kernel")]
        f, c, kh, kw = kernel.shape
        wmat = kernel.astype(self.dtype, copy=False).transpose(2, 3, 1, 0).reshape(kh * kw * c, f)
        cols = self._im2col(self._padded(_nhwc(x), 0.0), n)
        y = cols @ wmat
        if self.has_bias:
            y += params[self.key("bias")].astype(self.dtype, copy=False)
        self._cache = (n, cols, wmat)
        oh, ow = self.out_hw
        return _nchw(y.reshape(n, oh, ow, f))

    def backward(self, dy, params, grads):
        """dy: (N, F, OH, OW) -> dx (N, C, H, W), or None when need_dx is False."""
        n, cols, wmat = self._cache
        oh, ow = self.out_hw
        m = n * oh * ow
        dy2 = _nhwc(dy).astype(self.dtype, copy=False).reshape(m, self.filters)
        kh, kw = self.kernel
        c = self.in_chw[0]
        dw = cols.T @ dy2
        grads[self.key("kernel")] = np.ascontiguousarray(dw.reshape(kh, kw, c, self.filters).transpose(3, 2, 0, 1))
        if self.has_bias:
            if self._ones is None or self._ones.shape[0] != m or self._ones.dtype != dy2.dtype:
                self._ones = np.ones(m, dtype=dy2.dtype)
            grads[self.key("bias")] = self._ones @ dy2
        if not self.need_dx:
            return None
        # cols is not needed any more: write the column gradient over it.
        dcols = np.matmul(dy2, wmat.T, out=cols) if cols is self._cols else dy2 @ wmat.T
        dxp = self._grad_buffer(n, dcols.dtype)
        d6 = dcols.reshape(n, oh, ow, kh, kw, c)
        for i, j, view in _window_views(dxp, self.kernel, self.stride, self.out_hw):
            view += d6[:, :, :, i, j, :]
        return _nchw(self._crop(dxp))


@register("maxpool")
class MaxPool(_WindowOp):
    """Max over each kh x kw window; padding acts as -inf.

    x: (N, C, H, W) -> y: (N, C, OH, OW), y = max over offsets (i, j) of xp[.., r*sh+i, s*sw+j].
    Backward: each window's dy goes to the first offset (row-major) whose value equals
    the max, tracked with a boolean "still unassigned" mask; overlapping windows add.
    """

    def forward(self, x, params, training, rng):
        x = self._check(x)
        xp = self._padded(_nhwc(x), -np.inf)
        y = None
        for _, _, view in _window_views(xp, self.kernel, self.stride, self.out_hw):
            if y is None:
                y = view.copy()
            else:
                np.maximum(y, view, out=y)
        self._cache = (xp, y)
        return _nchw(y)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        xp, y = self._cache
        dyt = _nhwc(dy).astype(self.dtype, copy=False)
        dxp = self._grad_buffer(xp.shape[0], dyt.dtype)
        free = None  # windows whose gradient is still unassigned
        hit = np.empty(y.shape, dtype=bool)
        tmp = np.empty(y.shape, dtype=dyt.dtype)
        offsets = _window_views(xp, self.kernel, self.stride, self.out_hw)
        douts = _window_views(dxp, self.kernel, self.stride, self.out_hw)
        for (_, _, xv), (_, _, dv) in zip(offsets, douts):
            np.equal(xv, y, out=hit)
            if free is None:
                free = np.logical_not(hit)
            else:
                hit &= free
                free &= ~hit
            np.multiply(dyt, hit, out=tmp)
            dv += tmp
        return _nchw(self._crop(dxp))


def _counts(size: int, k: int, s: int, pad_lo: int, out: int) -> np.ndarray:
    """Real (unpadded) pixels under each window along one axis: (out,) ints."""
    start = np.arange(out) * s - pad_lo
    return np.minimum(start + k, size) - np.maximum(start, 0)


@register("avgpool")
class AvgPool(_WindowOp):
    """Mean over the real pixels of each window (ONNX count_include_pad=0).

    x: (N, C, H, W) -> y: (N, C, OH, OW), y = (sum of window, zero padded) / count[r, s],
    count = real rows under the window * real columns. Backward: dx += dy / count at
    every offset of the window.
    """

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        t, left, _, _ = self.pads
        _, h, w = self.in_chw
        count = np.outer(_counts(h, kh, sh, t, oh), _counts(w, kw, sw, left, ow))
        self.inv_count = (1.0 / count).astype(self.dtype)[None, :, :, None]  # (1, OH, OW, 1)
        self._n = 0

    def forward(self, x, params, training, rng):
        x = self._check(x)
        xp = self._padded(_nhwc(x), 0.0)
        y = None
        for _, _, view in _window_views(xp, self.kernel, self.stride, self.out_hw):
            if y is None:
                y = view.copy()
            else:
                y += view
        y *= self.inv_count
        self._n = x.shape[0]
        return _nchw(y)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        g = _nhwc(dy) * self.inv_count
        dxp = self._grad_buffer(self._n, g.dtype)
        for _, _, view in _window_views(dxp, self.kernel, self.stride, self.out_hw):
            view += g
        return _nchw(self._crop(dxp))


@register("global_avgpool")
class GlobalAvgPool(Op):
    """Mean over height and width: x (N, C, H, W) -> y (N, C); dx = dy / (H*W) everywhere."""

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.in_chw = tuple(layer.in_shape)
        self._n = 0

    def forward(self, x, params, training, rng):
        x = x if x.dtype == self.dtype else x.astype(self.dtype)
        self._n = x.shape[0]
        return _nhwc(x).mean(axis=(1, 2), dtype=self.dtype)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        c, h, w = self.in_chw
        dxt = np.empty((self._n, h, w, c), dtype=self.dtype)
        dxt[...] = (dy.astype(self.dtype, copy=False) / (h * w))[:, None, None, :]
        return _nchw(dxt)
