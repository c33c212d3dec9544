"""Convolution and pooling ops: conv2d, maxpool, avgpool, global_avgpool.

Arrays at the op boundary are NCHW and C-contiguous, as everywhere in the engine:
``x`` is ``(N, C, H, W)``, ``dy`` is ``(N, F, OH, OW)``. Like the ops of ``ops.py``,
outputs and input gradients live in per-op buffers reused while the batch shape
repeats: an array ``forward``/``backward`` returns is valid until the op's next call.

conv2d has two layouts, picked by the number of taps K = C*kh*kw (``Conv2D.layout``):

* "rows" (K > 32, e.g. the second conv of a CNN): an NHWC copy of the (padded) input,
  where the channels of a pixel are contiguous, so that im2col is a single strided copy
  whose innermost runs are ``kw*C`` floats long, and the convolution is ONE matrix
  multiply ``Y.T (N*OH*OW, F) = cols @ Wmat.T`` (Wmat ``(F, kh*kw*C)``). The NHWC
  ``(N, OH*OW, F)`` result goes to NCHW by one transposing copy that also adds the bias.
* "unfold" (K <= 32, e.g. a first layer on 1-3 channels): cols ``(N, K+1, OH*OW)`` from
  NCHW with a constant row of ones, and one batched matmul ``y[n] = Wmat (F, K+1) @ cols[n]``
  writes NCHW directly with the bias included (such a GEMM is memory-bound: the transpose
  a single big GEMM needs would cost more than the GEMM).

Padding follows ONNX: explicit ``(top, left, bottom, right)`` pads from
:func:`dnnspec.shapes.conv_pads`; ``same`` is SAME_UPPER (the odd pixel goes at the
bottom/right). Sizes that do not divide floor: ``OH = (H + top + bottom - kh) // sh + 1``.

Conventions that tests and the ONNX exporter rely on:

* maxpool: padding acts as ``-inf``; backward routes each window's gradient to ONE
  input, the first maximum in window order (row-major over the ``kh x kw`` offsets,
  as ``np.argmax`` on the flattened window); overlapping windows add up.
* avgpool: padding is not counted (ONNX ``count_include_pad=0``): each output is the
  mean of the real pixels under its window.

Every op computes in its dtype (float32 by default, float64 for gradient checks).
``op.need_dx = False`` makes ``backward`` return None. ``forward`` then ``backward``
must pair up, as the trainer calls them: conv2d's backward writes the column gradient
over the column buffer its forward filled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..ir import Layer
from ..registry import dilated
from ..shapes import conv_pads
from . import fused, threads
from .base import Op, grad_out, register
from .crew import blas as crew_blas
from .threads import matmul, parallel


def _window_views(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                  out_hw: tuple[int, int], axes: tuple[int, int] = (2, 3)):
    """Yield ``(i, j, view)`` for each kernel offset: the inputs that offset sees.

    xp: a padded array whose spatial axes are ``axes`` ((2, 3) for NCHW, (1, 2) for
    NHWC); view = xp[.., i + sh*r, j + sw*s, ..] for r < OH, s < OW, a strided slice,
    writeable if xp is. The loop is over the kh*kw offsets only, in row-major order.
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    index = [slice(None)] * xp.ndim
    for i in range(kh):
        for j in range(kw):
            index[axes[0]] = slice(i, i + sh * (oh - 1) + 1, sh)
            index[axes[1]] = slice(j, j + sw * (ow - 1) + 1, sw)
            yield i, j, xp[tuple(index)]


def winograd_kernels() -> Any:
    """The compiled Winograd transforms (engine/winograd_kernels.py), or None where the NumPy path runs.

    Follows ``$DNNSPEC_FUSED`` like the other compiled kernels (engine/fused.py): None with
    ``0`` or without numba; numba is imported on the first training step that asks.
    """
    if fused.kernels() is None:
        return None
    from . import winograd_kernels as wk  # numba: only here, never for check or inference

    return wk


def _direct_gemm(dtype: Any) -> tuple[int, Any]:
    """(address of cblas_sgemm/dgemm, 1 in ``dtype``) for the Winograd runs' compiled products, or (0, None)
    where the BLAS NumPy loaded has no ILP64 cblas (engine/crew.py): NumPy's matmul then."""
    blas = crew_blas()
    if not blas.ok:
        return 0, None
    is64 = np.dtype(dtype) == np.float64
    return blas.addresses[is64], np.dtype(dtype).type(1)


def _winograd_groups(fn: Any, groups: list[list[tuple[int, int]]]) -> None:
    """``fn(i, runs)`` for each group of runs (:meth:`Conv2D._winograd_runs`), the groups shared out by
    the threads in use: each group is one thread's, in order, so no cut depends on the thread count."""
    k = threads.threads() if threads.active() else 1
    threads.parallel_pieces(lambda i, lo, hi: fn(i, groups[i]), len(groups), len(groups), k, indexed=True)


class _WindowOp(Op):
    """Shared geometry of conv2d and the pools (kernel, stride, pads) and named buffers."""

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        c, h, w = layer.in_shape
        self.in_chw = (c, h, w)
        self.out_hw = tuple(layer.out_shape[1:])
        self.kernel = tuple(self.opts["kernel"])
        self.stride = tuple(self.opts["stride"])
        self.pads = conv_pads(dilated(self.opts) if layer.kind == "conv2d" else self.opts, h, w)
        self.padded_hw = (h + self.pads[0] + self.pads[2], w + self.pads[1] + self.pads[3])

    def _check(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_chw:
            raise ValueError(f"{self.name}: expected input (N, {', '.join(map(str, self.in_chw))}), "
                             f"got {tuple(x.shape)}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _interior(self, xp: np.ndarray, axes: tuple[int, int] = (2, 3)) -> np.ndarray:
        """The unpadded part of a padded array (spatial ``axes``): a view."""
        t, left, _, _ = self.pads
        _, h, w = self.in_chw
        index = [slice(None)] * xp.ndim
        index[axes[0]], index[axes[1]] = slice(t, t + h), slice(left, left + w)
        return xp[tuple(index)]

    def _unpad(self, dxp: np.ndarray) -> np.ndarray:
        """A padded NCHW gradient -> its C-contiguous interior (N, C, H, W); dxp itself without pads."""
        if not any(self.pads):
            return dxp
        dx = self.buf("dx", dxp.shape[:2] + self.in_chw[1:])
        np.copyto(dx, self._interior(dxp))
        return dx

    def _padded_nchw(self, x: np.ndarray, fill: float) -> np.ndarray:
        """x (N, C, H, W) -> (N, C, Hp, Wp) with ``fill`` in the border; x itself without pads."""
        if not any(self.pads):
            return x
        xp = self.buf("xp", (x.shape[0], x.shape[1]) + self.padded_hw, fill=fill)
        np.copyto(self._interior(xp), x)
        return xp


@register("conv2d")
class Conv2D(_WindowOp):
    """2-D cross-correlation (what deep learning calls convolution), NCHW in and out.

    x: (N, C, H, W); kernel: (F, C, kh, kw); bias: (F,); y: (N, F, OH, OW)::

        y[n, f, r, s] = bias[f] + sum_{c,i,j} kernel[f, c, i, j] * xp[n, c, r*sh + i, s*sw + j]

    with xp the zero-padded input. As matrices (M = N*OH*OW, K = kh*kw*C):
    ``cols (M, K)`` holds the receptive fields (rows (n, r, s), columns (i, j, c)),
    ``wmat (F, K)`` the kernel, and ``Y (F, M) = wmat @ cols.T`` (computed as its
    transpose ``cols @ wmat.T``, NHWC). Backward with
    ``dY (F, M)``: ``dW = dY @ cols``, ``db = dY @ 1``, ``dcols = dY.T @ wmat`` (stored
    offset-major) and dx is col2im of dcols: one strided add per kernel offset.
    """

    #: Layers with at most this many kernel taps (K = C*kh*kw) use the per-example layout.
    UNFOLD_MAX_K = 32
    #: Training steps of eligible layers (``self.winograd``) take the Winograd path when numba loads.
    use_winograd = True

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        self.filters = layer.out_shape[0]
        self.has_bias = bool(self.opts.get("bias", True))
        c, (kh, kw) = self.in_chw[0], self.kernel
        # "unfold" (few taps, e.g. the first layer of a network on 1-3 channels): the GEMM is
        # memory-bound and its (F, N*P) result would cost a full transpose to reach NCHW, so
        # one small GEMM per example writes NCHW directly. "rows" (many taps): one big GEMM.
        self.layout = "unfold" if c * kh * kw <= self.UNFOLD_MAX_K else "rows"
        self.dilation = tuple(self.opts.get("dilation", (1, 1)))
        self.groups = int(self.opts.get("groups", 1))
        if self.dilation != (1, 1) or self.groups != 1:  # the fast layouts assume dense, contiguous taps
            self.layout = "general"
        # Training steps of a "rows" 3x3 stride-1 convolution take the Winograd path when its
        # compiled transforms load (numba): 36 matrix products with C taps instead of one with 9*C.
        self.winograd = (self.layout == "rows" and self.kernel == (3, 3) and self.stride == (1, 1)
                         and max(self.pads) <= 2)
        # Output pixel order: (block, grid) = ((1, 1), (OH, OW)) is plain row-major NCHW;
        # feed_pool() makes it pool-window-major for the tiling maxpool that consumes it.
        self.block: tuple[int, int] = (1, 1)
        self.grid: tuple[int, int] = self.out_hw
        self.pool: MaxPool | None = None
        self.bias_before_pool = False  # "rows" feeding a pool through a batch norm: add the bias first

    def feed_pool(self, pool: MaxPool, through: Any = None) -> None:
        """Hand the output straight to ``pool`` (a maxpool with stride = kernel, no padding), window-major.

        The output pixels are computed in the order (i, j, r, s) = (offset inside the pool
        window, pooled row, pooled column) instead of row-major (r, c): each window offset
        is then one contiguous block that the pool reduces with plain elementwise maxima,
        and its gradient comes back in the same order, so neither side transposes or
        scatters. Pixels that no window covers (an odd last row or column, which the pool
        floors away) are not computed at all: nothing reads them, and their gradient is 0.
        What the pool receives is no longer NCHW: ``(F, M)`` with the M = N*kk*gh*gw pixels
        ordered (i, j, n, r, s) ("unfold": one GEMM over the batch, see _forward_wide) or
        ``(N, kk, gh*gw, F)`` without the bias ("rows"; the pool calls :meth:`finish`).

        ``through``: a batch norm between the two (conv -> batchnorm -> maxpool in run
        order). It normalises the window-major blocks per channel as they pass (its
        channel axis follows the layout), and the pool's maxima go to NCHW through it
        (``BatchNorm.finish``); a "rows" conv then adds its bias itself.
        """
        if self.layout == "general":  # refused: the pool keeps reading NCHW
            return
        self.block, self.grid, self.pool = pool.kernel, pool.out_hw, pool
        pool.producer = self
        if through is not None:  # a batch norm between: it normalises the window-major blocks
            through.pass_through(self, pool)
            pool.producer = through
            self.bias_before_pool = True  # "rows": batch norm must see the bias

    def _pixels(self, s_h: int, s_w: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shape and strides of the output pixels over an input with row/column strides s_h, s_w.

        Pixel (i, j, r, s) reads input row sh*(i + ph*r), column sw*(j + pw*s); with the
        plain order (block (1, 1)) that is (r, s) -> (sh*r, sw*s), row-major.
        """
        (ph, pw), (gh, gw), (sh, sw) = self.block, self.grid, self.stride
        return (ph, pw, gh, gw), (sh * s_h, sw * s_w, ph * sh * s_h, pw * sw * s_w)

    def _npix(self) -> int:
        """Output pixels computed per example (all OH*OW of them unless a pool floors some away)."""
        (ph, pw), (gh, gw) = self.block, self.grid
        return ph * pw * gh * gw

    def _im2col(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> cols (N*P, kh*kw*C) (P pixels: _pixels), via a padded NHWC copy and one strided copy."""
        n, c = x.shape[:2]
        kh, kw = self.kernel
        xp = self.buf("xp", (n,) + self.padded_hw + (c,), fill=0.0)  # NHWC, border stays zero
        inner, xt = self._interior(xp, (1, 2)), x.transpose(0, 2, 3, 1)
        cols = self.buf("cols", (n * self._npix(), kh * kw * c))
        s_n, s_h, s_w, s_c = xp.strides
        dims, strides = self._pixels(s_h, s_w)
        out = cols.reshape(n, *dims, kh, kw, c)

        def piece(lo: int, hi: int) -> None:  # examples lo..hi-1
            np.copyto(inner[lo:hi], xt[lo:hi])
            win = as_strided(xp[lo:], (hi - lo, *dims, kh, kw, c), (s_n, *strides, s_h, s_w, s_c), writeable=False)
            np.copyto(out[lo:hi], win)

        parallel(piece, n, cols.size)
        return cols

    def forward(self, x, params, training, rng):
        """x: (N, C, H, W) -> y (N, F, OH, OW)."""
        x = self._check(x)
        if self.layout == "unfold":
            return self._forward_unfold(x, params)
        if self.layout == "general":
            return self._forward_general(x, params)
        if training and self.winograd and self.use_winograd and self.pool is None:
            wk = winograd_kernels()
            if wk is not None:
                return self._forward_winograd(x, params, wk)
        n, f = x.shape[0], self.filters
        kernel = params[self.key("kernel")].astype(self.dtype, copy=False)
        wmat = self.buf("wmat", (f, kernel[0].size))  # (F, K), columns (i, j, c) like cols
        np.copyto(wmat.reshape(f, *self.kernel, -1), kernel.transpose(0, 2, 3, 1))
        cols = self._im2col(x)
        # Y.T (M, F) = cols @ wmat.T, i.e. NHWC: ~12% faster than wmat @ cols.T (F, M) here, which
        # more than pays for the (N, P, F) -> (N, F, P) transpose that adds the bias (measured).
        ymf = matmul(cols, wmat.T, self.buf("ymf", (cols.shape[0], f)))
        self._saved = (n, cols, wmat)
        if self.pool is not None:  # the pool takes the maxima first, then calls finish() on 1/kk of it
            (ph, pw), (gh, gw) = self.block, self.grid
            if self.bias_before_pool and self.has_bias:
                bias = params[self.key("bias")].astype(self.dtype, copy=False)
                parallel(lambda lo, hi: np.add(ymf[lo:hi], bias, out=ymf[lo:hi]), len(ymf), ymf.size)
            return ymf.reshape(n, ph * pw, gh * gw, f)
        return self.finish(ymf.reshape(n, -1, f), params)

    def finish(self, ynhwc: np.ndarray, params) -> np.ndarray:
        """("rows") (N, P, F) pre-bias outputs -> y (N, F, gh, gw) NCHW plus the bias: one transposing copy."""
        n, f = ynhwc.shape[0], self.filters
        y = self.buf("y", (n, f) + self.grid)
        bias = params[self.key("bias")].astype(self.dtype, copy=False)[:, None] if self.has_bias else None
        threads.copy(y.reshape(n, f, -1), ynhwc.transpose(0, 2, 1), bias)
        return y

    def backward(self, dy, params, grads):
        """dy: (N, F, OH, OW) -> dx (N, C, H, W), or None when need_dx is False."""
        if self.layout == "unfold":
            return self._backward_unfold(dy, params, grads)
        if self.layout == "general":
            return self._backward_general(dy, params, grads)
        if self._saved[0] == "winograd":
            return self._backward_winograd(dy, params, grads)
        n, cols, wmat = self._saved
        f, c, (kh, kw) = self.filters, self.in_chw[0], self.kernel
        m = cols.shape[0]
        if self.pool is not None:  # the pool's gradient is already dY.T, rows in the order of cols
            dyt = dy.reshape(m, f)
        else:
            dyt = self.buf("dyt", (m, f))  # (N*P, F)
            threads.copy(dyt.reshape(n, -1, f), dy.reshape(n, f, -1).transpose(0, 2, 1))
        dw = matmul(dyt.T, cols, self.buf("dw", wmat.shape))
        dk = grad_out(grads, self.key("kernel"), params[self.key("kernel")], self.dtype)
        np.copyto(dk, dw.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))
        if self.has_bias:
            np.sum(dyt, axis=0, out=grad_out(grads, self.key("bias"), params[self.key("bias")], self.dtype))
        if not self.need_dx:
            return None
        # dcols = dY.T @ wmat, written offset-major: (kh*kw, M, C), one (M, F) @ (F, C) block per
        # kernel offset in one matmul call, so that col2im reads each offset's block contiguously.
        # It goes over cols, which is not needed any more.
        w_offsets = wmat.reshape(f, kh * kw, c).transpose(1, 0, 2)  # (kh*kw, F, C) view
        dcols = matmul(dyt[None], w_offsets, cols.reshape(kh * kw, m, c))
        return self._col2im(dcols, n)

    def _col2im(self, dcols: np.ndarray, n: int) -> np.ndarray:
        """dcols (kh*kw, N*P, C) -> dx (N, C, H, W): add each offset's block at its strided place."""
        c, (kh, kw) = self.in_chw[0], self.kernel
        dxp = self.buf("dxp", (n,) + self.padded_hw + (c,))  # NHWC
        s_n, s_h, s_w, s_c = dxp.strides
        dims, strides = self._pixels(s_h, s_w)
        blocks = [dcols[o].reshape(n, *dims, c) for o in range(kh * kw)]
        dx = self.buf("dx", (n,) + self.in_chw)

        def piece(lo: int, hi: int) -> None:  # examples lo..hi-1: disjoint parts of dxp and dx
            part = dxp[lo:hi]
            part.fill(0)
            for o, block in enumerate(blocks):
                i, j = divmod(o, kw)
                view = as_strided(part[:, i:, j:], (hi - lo, *dims, c), (s_n, *strides, s_c))
                view += block[lo:hi]
            np.copyto(dx[lo:hi], self._interior(part, (1, 2)).transpose(0, 3, 1, 2))

        parallel(piece, n, dcols.size)
        return dx

    # --- "winograd": F(4x4, 3x3) tiles, training steps of 3x3 stride-1 "rows" convolutions -----

    #: Bytes of one run of examples' tiles (V or M): each run goes through its transforms and
    #: products while it is in the core's cache (512 KiB: the resnet's steps ~8 % faster than 2 runs).
    WINOGRAD_RUN_BYTES = 1 << 19

    def _winograd_runs(self, n: int, tiles: int, width: int) -> list[list[tuple[int, int]]]:
        """Runs of examples ``(lo, hi)`` whose (36, tiles, width) blocks are about WINOGRAD_RUN_BYTES,
        in :func:`threads.pieces` groups of consecutive runs (one thread's each)."""
        per_example = 36 * tiles * width * np.dtype(self.dtype).itemsize
        groups = threads.pieces()
        count = max(groups, min(n, -(-n * per_example // self.WINOGRAD_RUN_BYTES)))
        runs = [(lo, hi) for lo, hi in threads.bounds(n, count) if hi > lo]
        return [runs[a:b] for a, b in threads.bounds(len(runs), groups)]

    def _tile_grid(self) -> tuple[int, int]:
        """(TH, TW): 4x4 output tiles down and across (the last ones may reach past the output)."""
        oh, ow = self.out_hw
        return -(-oh // 4), -(-ow // 4)

    def _forward_winograd(self, x: np.ndarray, params, wk) -> np.ndarray:
        """y = A^T [U . V] A tile by tile: U = G g G^T (36, C, F), V = B^T d B (36, T, C), M = V @ U.

        T = N*TH*TW tiles; each of the 36 tile positions is one (T_run, C) @ (C, F) matrix
        product: 36 multiply-adds per 16 outputs where the 9*C-tap product of "rows" takes 144
        (4x fewer; 3.1x on a 14x14 image, whose last tiles reach past it), and no 9x im2col
        copy (the 6x6 input tiles overlap by two pixels). The examples are
        cut into runs (:meth:`_winograd_runs`), each copied in, transformed, multiplied and
        written to NCHW (plus the bias) by one thread while its tiles are in that core's
        cache; the bits depend on the cut only, never on the thread count.
        """
        n, f = x.shape[0], self.filters
        c, h, w = self.in_chw
        (oh, ow), (th, tw), (top, left) = self.out_hw, self._tile_grid(), self.pads[:2]
        per = th * tw
        u = self._kernel_tiles(params, wk, flip=False)
        xw = self.buf("wino_x", (n, 4 * th + 2, 4 * tw + 2, c), fill=0.0)  # NHWC; the padding stays zero
        inner = xw[:, top:top + h, left:left + w]
        v = self.buf("wino_v", (36, n * per, c))
        m = self.buf("wino_m", (36, n * per, f))
        yw = self.buf("wino_y", (n, 4 * th, 4 * tw, f))
        y = self.buf("y", (n, f, oh, ow))
        bias = params[self.key("bias")].astype(self.dtype, copy=False)[:, None, None] if self.has_bias else None

        addr, one = _direct_gemm(self.dtype)

        def run(lo: int, hi: int) -> None:  # examples lo..hi-1: their tiles are rows lo*per..hi*per-1
            np.copyto(inner[lo:hi], x[lo:hi].transpose(0, 2, 3, 1))
            if addr:  # transforms and the 36 products in one compiled call
                wk.forward_run(xw, v, u, m, yw, lo, hi, th, tw, addr, one)
            else:
                wk.input_tiles(xw, v, lo, hi, th, tw)
                np.matmul(v[:, lo * per:hi * per], u, out=m[:, lo * per:hi * per])
                wk.output_tiles(m, yw, lo, hi, th, tw)
            out = yw[lo:hi, :oh, :ow].transpose(0, 3, 1, 2)
            if bias is None:
                np.copyto(y[lo:hi], out)
            else:
                np.add(out, bias, out=y[lo:hi])

        _winograd_groups(lambda i, runs: [run(lo, hi) for lo, hi in runs], self._winograd_runs(n, per, max(c, f)))
        self._saved = ("winograd", n, u, v, m, wk)
        return y

    def _kernel_tiles(self, params, wk, flip: bool) -> np.ndarray:
        """U (36, C, F) = G g G^T per (filter, channel) kernel g; ``flip``: (36, F, C) of the kernel turned
        by 180 degrees, the input gradient's convolution. Two tensordots, one small GEMM each."""
        kernel = params[self.key("kernel")].astype(self.dtype, copy=False)
        f, c = kernel.shape[:2]
        g = self._g(wk)
        # tiles[k, f, c, l] = sum_ij G[k, i] kernel[f, c, i, j] G[l, j] (flip: kernel[f, c, 2 - i, 2 - j])
        tiles = np.tensordot(g, np.tensordot(kernel[:, :, ::-1, ::-1] if flip else kernel, g, axes=([3], [1])),
                             axes=([1], [2]))
        u = self.buf("wino_ud", (36, f, c)) if flip else self.buf("wino_u", (36, c, f))
        np.copyto(u.reshape(6, 6, *u.shape[1:]), tiles.transpose((0, 3, 1, 2) if flip else (0, 3, 2, 1)))
        return u

    def _g(self, wk) -> np.ndarray:
        """G of F(4, 3) in the op's dtype."""
        g = self.buf("wino_g", (6, 3))
        np.copyto(g, wk.G)
        return g

    def _backward_winograd(self, dy: np.ndarray, params, grads) -> np.ndarray | None:
        """dM = A dY A^T, dU = V^T @ dM (runs summed in order), dg = G^T dU G; dx a Winograd convolution of dY.

        The input gradient of a stride-1 3x3 convolution is the 3x3 convolution of dY, padded
        by 2 - pad, with the flipped kernel (F channels in, C out): the forward's transforms
        again, on tiles of the input grid, reading the same padded copy of dY as dM's tiles.
        Its tiles and products go over M and V when the two grids have as many tiles
        (neither is needed any more: forward and backward pair up).
        """
        _, n, u, v, m, wk = self._saved
        f, (c, h, w) = self.filters, self.in_chw
        (oh, ow), (th, tw), (top, left) = self.out_hw, self._tile_grid(), self.pads[:2]
        thx, twx = -(-h // 4), -(-w // 4)  # the input gradient's 4x4 tiles
        per, perx = th * tw, thx * twx
        r0, c0 = 2 - top, 2 - left  # where dY sits in its padded NHWC frame
        shape = (n, max(4 * thx + 2, r0 + 4 * th), max(4 * twx + 2, c0 + 4 * tw), f)
        dyp = self.buf("wino_dy", shape, fill=0.0)  # the zeros around dY stay
        groups = self._winograd_runs(n, max(per, perx), max(c, f))
        du = self.buf("wino_du", (len(groups), 36, c, f))  # a partial sum per group
        part = self.buf("wino_part", (len(groups), 36, c, f))  # the latest run's, added to it
        need_dx = self.need_dx
        if need_dx:
            ud = self._kernel_tiles(params, wk, flip=True)
            vd = m if perx == per else self.buf("wino_vd", (36, n * perx, f))
            md = v if perx == per else self.buf("wino_md", (36, n * perx, c))
            dxw = self.buf("wino_dx", (n, 4 * thx, 4 * twx, c))
            dx = self.buf("dx", (n, c, h, w))

        addr, one = _direct_gemm(self.dtype)
        if not need_dx:  # backward_run's unused arguments, of the types it compiles for
            ud, vd, md, dxw = u, m, v, dyp

        def run(i: int, first: bool, lo: int, hi: int) -> None:  # group i's run lo..hi-1
            np.copyto(dyp[lo:hi, r0:r0 + oh, c0:c0 + ow], dy[lo:hi].transpose(0, 2, 3, 1))
            if addr:  # transforms and products in one compiled call
                wk.backward_run(dyp, v, m, du[i], part[i], first, ud, vd, md, dxw, lo, hi, th, tw, thx, twx, r0, c0,
                                need_dx, addr, one)
            else:
                wk.output_tiles_grad(dyp, m, lo, hi, th, tw, r0, c0)
                np.matmul(v[:, lo * per:hi * per].transpose(0, 2, 1), m[:, lo * per:hi * per],
                          out=du[i] if first else part[i])
                if not first:
                    du[i] += part[i]
                if need_dx:
                    wk.input_tiles(dyp, vd, lo, hi, thx, twx)
                    np.matmul(vd[:, lo * perx:hi * perx], ud, out=md[:, lo * perx:hi * perx])
                    wk.output_tiles(md, dxw, lo, hi, thx, twx)
            if need_dx:
                np.copyto(dx[lo:hi], dxw[lo:hi, :h, :w].transpose(0, 3, 1, 2))

        def group(i: int, runs: list[tuple[int, int]]) -> None:
            for j, (lo, hi) in enumerate(runs):
                run(i, j == 0, lo, hi)
            if not runs:
                du[i].fill(0)

        _winograd_groups(group, groups)
        # the groups' partial sums in group order: the same bits however many threads ran them
        dus = du[0] if len(du) == 1 else np.sum(du, axis=0, out=self.buf("wino_dus", (36, c, f)))
        dk = grad_out(grads, self.key("kernel"), params[self.key("kernel")], self.dtype)
        g = self._g(wk)  # dk[f, c, i, j] = sum_kl G[k, i] dU[k, l, c, f] G[l, j]
        np.copyto(dk, np.tensordot(g, np.tensordot(dus.reshape(6, 6, c, f), g, axes=([1], [0])),
                                   axes=([0], [0])).transpose(2, 1, 0, 3))
        if self.has_bias:
            np.sum(dy, axis=(0, 2, 3), out=grad_out(grads, self.key("bias"), params[self.key("bias")], self.dtype))
        return dx if need_dx else None

    # --- "unfold" layout feeding a pool: ONE GEMM on cols (K+1, M), M window-major -------------

    def _wide_dims(self, n: int, s_n: int, s_h: int, s_w: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shape and strides of the M pixels (i, j, n, r, s) of the pool-fed "unfold" layout, n examples."""
        (ph, pw, gh, gw), (t_i, t_j, t_r, t_s) = self._pixels(s_h, s_w)
        return (ph, pw, n, gh, gw), (t_i, t_j, s_n, t_r, t_s)

    def _forward_wide(self, x: np.ndarray, params) -> np.ndarray:
        """Y (F, M) = wmat (F, K+1) @ cols (K+1, M), M = N*P ordered (i, j, n, r, s): window offset first.

        With a pool after it the per-example GEMMs of the plain "unfold" layout are not
        needed to reach NCHW (the pool transposes 1/kk of the data, after its max), so one
        GEMM over the whole batch does it, and each window offset's block ``Y[:, k]``
        holds F long contiguous rows for the pool's elementwise maxima.
        """
        n, f = x.shape[0], self.filters
        c, (kh, kw) = self.in_chw[0], self.kernel
        k, k1 = c * kh * kw, c * kh * kw + self.has_bias
        wmat = self.buf("wmat", (f, k1))
        np.copyto(wmat[:, :k], params[self.key("kernel")].reshape(f, k))  # casts to our dtype
        if self.has_bias:
            np.copyto(wmat[:, k], params[self.key("bias")])
        cols = self.buf("cols_wide", (k1, n * self._npix()), fill=1.0)  # row k stays 1.0 (bias row)
        xp = self._padded_nchw(x, 0.0)
        s_n, s_c, s_h, s_w = xp.strides
        dims, strides = self._wide_dims(n, s_n, s_h, s_w)
        win = as_strided(xp, (c, kh, kw, *dims), (s_c, s_h, s_w, *strides), writeable=False)
        out = cols[:k].reshape(c, kh, kw, *dims)
        parallel(lambda lo, hi: np.copyto(out[:, :, :, :, :, lo:hi], win[:, :, :, :, :, lo:hi]), n, k * cols.shape[1])
        y = matmul(wmat, cols, self.buf("y_wide", (f, cols.shape[1])))
        self._saved = (n, cols, wmat)
        return y

    def _backward_wide(self, dy: np.ndarray, params, grads) -> np.ndarray | None:
        """dY (F, M) from the pool: dW = dY @ cols.T (db its last column), dcols = wmat.T @ dY, col2im."""
        n, cols, wmat = self._saved
        f, k1 = wmat.shape
        c, (kh, kw) = self.in_chw[0], self.kernel
        k = c * kh * kw
        dym = dy.reshape(f, -1)
        dw = matmul(dym, cols.T, self.buf("dw", (f, k1)))
        np.copyto(grad_out(grads, self.key("kernel"), params[self.key("kernel")], self.dtype).reshape(f, k), dw[:, :k])
        if self.has_bias:
            np.copyto(grad_out(grads, self.key("bias"), params[self.key("bias")], self.dtype), dw[:, k])
        if not self.need_dx:
            return None
        dcols = matmul(wmat[:, :k].T, dym, self.buf("dcols_wide", (k, dym.shape[1])))
        dxp = self.buf("dxp", (n, c) + self.padded_hw)
        s_n, s_c, s_h, s_w = dxp.strides
        dims, strides = self._wide_dims(n, s_n, s_h, s_w)
        d = dcols.reshape(c, kh, kw, *dims)
        dx = self.buf("dx", (n,) + self.in_chw) if any(self.pads) else dxp

        def piece(lo: int, hi: int) -> None:  # examples lo..hi-1: disjoint parts of dxp and dx
            part = dxp[lo:hi]
            part.fill(0)
            for i in range(kh):
                for j in range(kw):
                    view = as_strided(part[:, :, i:, j:], (c, *dims[:2], hi - lo, *dims[3:]), (s_c, *strides))
                    view += d[:, i, j, :, :, lo:hi]
            if dx is not dxp:
                np.copyto(dx[lo:hi], self._interior(part))

        parallel(piece, n, dcols.size)
        return dx

    # --- "unfold" layout: per-example GEMMs on cols (N, K+1, P), NCHW in and out ---------

    def _forward_unfold(self, x: np.ndarray, params) -> np.ndarray:
        """y[n] (F, P) = wmat (F, K+1) @ cols[n] (K+1, P) for every n, in one np.matmul call.

        cols rows are the taps in kernel order (c, i, j), then (with a bias) a row of ones
        written once when the buffer is made, so that the bias column of wmat adds the bias
        inside the GEMM and the backward's dW gets db as its last column. The output lands
        in NCHW order as it is computed: no transpose, no separate bias pass.
        """
        if self.pool is not None:
            return self._forward_wide(x, params)
        n, f = x.shape[0], self.filters
        c, (kh, kw), (oh, ow) = self.in_chw[0], self.kernel, self.out_hw
        k, k1, p = c * kh * kw, c * kh * kw + self.has_bias, self._npix()
        wmat = self.buf("wmat", (f, k1))
        np.copyto(wmat[:, :k], params[self.key("kernel")].reshape(f, k))  # casts to our dtype
        if self.has_bias:
            np.copyto(wmat[:, k], params[self.key("bias")])
        cols = self.buf("cols", (n, k1, p), fill=1.0)  # row k stays 1.0 (bias row)
        xp = self._padded_nchw(x, 0.0)
        s_n, s_c, s_h, s_w = xp.strides
        dims, strides = self._pixels(s_h, s_w)
        # ONE strided copy; in the plain order its innermost runs are OW contiguous floats of an input row (sw = 1).
        win = as_strided(xp, (n, c, kh, kw, *dims), (s_n, s_c, s_h, s_w, *strides), writeable=False)
        np.copyto(cols[:, :k].reshape(n, c, kh, kw, *dims), win)  # splitting axis 1: a view
        y = self.buf("y", (n, f, p))
        np.matmul(wmat, cols, out=y)
        self._saved = (n, cols, wmat)
        return y.reshape(n, f, oh, ow)

    def _backward_unfold(self, dy: np.ndarray, params, grads) -> np.ndarray | None:
        """dW = sum_n dy[n] (F, P) @ cols[n].T, db its last column; dcols[n] = wmat.T @ dy[n]; col2im."""
        if self.pool is not None:
            return self._backward_wide(dy, params, grads)
        n, cols, wmat = self._saved
        f, k1 = wmat.shape
        c, (kh, kw) = self.in_chw[0], self.kernel
        k = c * kh * kw
        dyr = np.ascontiguousarray(dy, dtype=self.dtype).reshape(n, f, -1)  # (N, F, P)
        # (N, F, K+1) partial products, then a sum over N of small matrices (N*F*(K+1) floats).
        dwn = np.matmul(dyr, cols.transpose(0, 2, 1), out=self.buf("dwn", (n, f, k1)))
        dw = np.sum(dwn, axis=0, out=self.buf("dw", (f, k1)))
        np.copyto(grad_out(grads, self.key("kernel"), params[self.key("kernel")], self.dtype).reshape(f, k), dw[:, :k])
        if self.has_bias:
            np.copyto(grad_out(grads, self.key("bias"), params[self.key("bias")], self.dtype), dw[:, k])
        if not self.need_dx:
            return None
        dcols = np.matmul(wmat[:, :k].T, dyr, out=self.buf("dcols", (n, k, dyr.shape[2])))
        dxp = self.buf("dxp", (n, c) + self.padded_hw)
        dxp.fill(0)
        s_n, s_c, s_h, s_w = dxp.strides
        dims, strides = self._pixels(s_h, s_w)
        d = dcols.reshape(n, c, kh, kw, *dims)
        for i in range(kh):
            for j in range(kw):
                view = as_strided(dxp[:, :, i:, j:], (n, c, *dims), (s_n, s_c, *strides))
                view += d[:, :, i, j]
        return self._unpad(dxp)


    # --- "general" layout: dilation and groups, per-example and per-group GEMMs -----------

    def _taps(self, xp: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shape and strides of the windows of a padded NCHW array: (N, G, C/G, kh, kw, OH, OW).

        Tap (i, j) of output pixel (r, s) reads row sh*r + dh*i, column sw*s + dw*j.
        """
        (g, (kh, kw), (dh, dw), (sh, sw), (oh, ow)) = self.groups, self.kernel, self.dilation, self.stride, self.out_hw
        s_n, s_c, s_h, s_w = xp.strides
        c = self.in_chw[0]
        return ((xp.shape[0], g, c // g, kh, kw, oh, ow),
                (s_n, c // g * s_c, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w))

    def _forward_general(self, x: np.ndarray, params) -> np.ndarray:
        """y[n, g] (F/G, P) = W_g (F/G, K_g) @ cols[n, g] (K_g, P), K_g = C/G*kh*kw, in one np.matmul call.

        cols (N, G, K_g, P) holds the dilated receptive fields of group g's channels; the
        kernel (F, C/G, kh, kw) reshapes to W (G, F/G, K_g) without a copy.
        """
        n, f, g = x.shape[0], self.filters, self.groups
        p = self.out_hw[0] * self.out_hw[1]
        xp = self._padded_nchw(x, 0.0)
        shape, strides = self._taps(xp)
        kg = shape[2] * shape[3] * shape[4]
        cols = self.buf("cols", (n, g, kg, p))
        np.copyto(cols.reshape(shape), as_strided(xp, shape, strides, writeable=False))
        wmat = params[self.key("kernel")].astype(self.dtype, copy=False).reshape(g, f // g, kg)
        y = np.matmul(wmat, cols, out=self.buf("y", (n, g, f // g, p)))
        if self.has_bias:
            y += params[self.key("bias")].astype(self.dtype, copy=False).reshape(g, f // g, 1)
        self._saved = (n, cols, wmat)
        return y.reshape((n, f) + self.out_hw)

    def _backward_general(self, dy: np.ndarray, params, grads) -> np.ndarray | None:
        """dW_g = sum_n dy[n, g] @ cols[n, g].T; db = sum dy; dcols[n, g] = W_g.T @ dy[n, g]; col2im per tap."""
        n, cols, wmat = self._saved
        g, fg, kg = wmat.shape
        dyr = np.ascontiguousarray(dy, dtype=self.dtype).reshape(n, g, fg, -1)
        dwn = np.matmul(dyr, cols.transpose(0, 1, 3, 2), out=self.buf("dwn", (n, g, fg, kg)))
        dk = grad_out(grads, self.key("kernel"), params[self.key("kernel")], self.dtype)
        np.sum(dwn, axis=0, out=dk.reshape(g, fg, kg))
        if self.has_bias:
            np.sum(dyr, axis=(0, 3), out=grad_out(grads, self.key("bias"), params[self.key("bias")],
                                                  self.dtype).reshape(g, fg))
        if not self.need_dx:
            return None
        dcols = np.matmul(wmat.transpose(0, 2, 1), dyr, out=self.buf("dcols", (n, g, kg, dyr.shape[3])))
        dxp = self.buf("dxp", (n,) + self.in_chw[:1] + self.padded_hw)
        dxp.fill(0)
        shape, strides = self._taps(dxp)
        d = dcols.reshape(shape)
        taps = as_strided(dxp, shape, strides)
        for i in range(shape[3]):  # one strided add per tap: taps of one pixel may overlap when dilation < stride
            for j in range(shape[4]):
                taps[:, :, :, i, j] += d[:, :, :, i, j]
        return self._unpad(dxp)


@register("maxpool")
class MaxPool(_WindowOp):
    """Max over each kh x kw window; padding acts as -inf.

    x: (N, C, H, W) -> y: (N, C, OH, OW), y = max over offsets (i, j) of xp[.., r*sh+i, s*sw+j].
    Backward: each window's dy goes to the first offset (row-major) whose input equals
    the max, tracked with a boolean "window still unassigned" mask; overlapping windows add.
    """

    #: A Conv2D that lays its output out window-major for this pool (set by Conv2D.feed_pool).
    producer: Conv2D | None = None

    def forward(self, x, params, training, rng):
        if self.producer is not None:
            return self._forward_blocked(x, params)
        x = self._check(x)
        if self._tiles():
            return self._forward_tiled(x)
        xp = self._padded_nchw(x, -np.inf)
        y = self.buf("y", x.shape[:2] + self.out_hw)
        views = _window_views(xp, self.kernel, self.stride, self.out_hw)
        np.copyto(y, next(views)[2])
        for _, _, view in views:
            np.maximum(y, view, out=y)
        self._saved = (xp, y)
        return y

    def _tiles(self) -> bool:
        """True when windows do not overlap and there is no padding (stride = kernel), the usual 2x2/2.

        Sizes need not divide: the rows/columns past the last window are ignored (dx = 0 there).
        """
        return not any(self.pads) and self.kernel == self.stride

    # Fast path for non-overlapping windows. Elementwise numpy ops on the strided offset views
    # x[:, :, i::2, j::2] run about 10x slower than on contiguous arrays (no SIMD, stride-2
    # reads), so the input is copied ONCE into an offset-major array x4 (kh*kw, N, C, OH, OW);
    # the max and the tie-breaking masks then work on contiguous arrays.

    def _forward_tiled(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> y (N, C, OH, OW) via x4 (kh*kw, N, C, OH, OW), kept for backward."""
        n, c = x.shape[:2]
        (kh, kw), (oh, ow) = self.kernel, self.out_hw
        x6 = self.buf("x4", (kh, kw, n, c, oh, ow))
        xc = x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw).transpose(3, 5, 0, 1, 2, 4)  # a view
        x4, y = x6.reshape(kh * kw, n, c, oh, ow), self.buf("y", (n, c, oh, ow))

        def piece(lo: int, hi: int) -> None:  # examples lo..hi-1
            np.copyto(x6[:, :, lo:hi], xc[:, :, lo:hi])
            np.max(x4[:, lo:hi], axis=0, out=y[lo:hi])

        parallel(piece, n, x6.size)
        self._saved = (x4, y)
        return y

    def _backward_tiled(self, dy: np.ndarray) -> np.ndarray:
        """dx at offset k of each window = dy where k is the window's first max (row-major), else 0.

        The masks are contiguous; each offset's product goes straight into its strided view of
        dx (kh*kw writes of N*C*OH*OW floats). Scattering a contiguous (kh*kw, ...) gradient
        with one 6-D copy instead was 3x slower: numpy then walks dx with inner runs of kw.
        """
        x4, y = self._saved
        kk, n, c, oh, ow = x4.shape
        (kh, kw), (_, h, w) = self.kernel, self.in_chw
        dx = self.buf("dx_tiled", (n, c, h, w))
        if (oh * kh, ow * kw) != (h, w):  # rows/columns no window covers get no gradient
            dx[:, :, oh * kh:] = 0
            dx[:, :, :, ow * kw:] = 0
        hit = self.buf("hit", y.shape, np.bool_)
        free = self.buf("free", y.shape, np.bool_)  # windows whose gradient is still unassigned
        views = [dv for _, _, dv in _window_views(dx, self.kernel, self.stride, self.out_hw)]

        def piece(lo: int, hi: int) -> None:  # examples lo..hi-1
            _route_to_first_max(x4[:, lo:hi], y[lo:hi], dy[lo:hi], [v[lo:hi] for v in views],
                                hit[lo:hi], free[lo:hi])

        parallel(piece, n, x4.size)
        return dx

    # Window-major input from the conv before (Conv2D.feed_pool): offset k of every window is one
    # block, (C, kk, N*P) for an "unfold" conv, (N, kk, P, C) for a "rows" one (P = OH*OW). The
    # max is kk-1 elementwise maxima of whole blocks. For 2x2 windows the first maximum in
    # row-major order is a tournament of three comparisons, kept as three boolean masks:
    #   top = max(x0, x1) >= max(x2, x3),  left01 = x0 >= x1,  left23 = x2 >= x3
    # and backward splits dy with multiplications and subtractions only (d*mask is d or 0, so
    # d - d*mask is exact): dtop = d*top, dbot = d - dtop, dx0 = dtop*left01, dx1 = dtop - dx0,
    # dx2 = dbot*left23, dx3 = dbot - dx2. Other window sizes use the sequential masks.

    def _blocks(self, x: np.ndarray) -> tuple[int, list[np.ndarray], tuple[int, ...]]:
        """(N, the kk offset blocks of window-major ``x``, the shape of one block)."""
        kk, c, p = self.kernel[0] * self.kernel[1], self.in_chw[0], self.out_hw[0] * self.out_hw[1]
        if self.producer.layout == "unfold":  # (C, kk, N*P)
            n = x.shape[1] // (kk * p)
            xb = x.reshape(c, kk, n * p)
            return n, [xb[:, k] for k in range(kk)], (c, n * p)
        n = x.shape[0]  # "rows": (N, kk, P, C)
        xb = x.reshape(n, kk, p, c)
        return n, [xb[:, k] for k in range(kk)], (n, p, c)

    def _forward_blocked(self, x: np.ndarray, params) -> np.ndarray:
        n, parts, shape = self._blocks(x)
        ymax = self.buf("ymax", shape)
        wide = self.producer.layout == "unfold"
        c, p = self.in_chw[0], self.out_hw[0] * self.out_hw[1]
        y = self.buf("y", (n, c) + self.out_hw) if wide else None
        if len(parts) == 4:
            m01 = self.buf("m01", shape)
            masks = (self.buf("top", shape, np.bool_), self.buf("left01", shape, np.bool_),
                     self.buf("left23", shape, np.bool_))
        else:
            masks = None

        def piece(lo: int, hi: int) -> None:  # rows lo..hi-1 of every block (channels or examples)
            ps, ym = [q[lo:hi] for q in parts], ymax[lo:hi]
            if masks is not None:
                x0, x1, x2, x3 = ps
                top, left01, left23 = (mk[lo:hi] for mk in masks)
                m = np.maximum(x0, x1, out=m01[lo:hi])
                np.maximum(x2, x3, out=ym)
                np.greater_equal(m, ym, out=top)
                np.greater_equal(x0, x1, out=left01)
                np.greater_equal(x2, x3, out=left23)
                np.maximum(m, ym, out=ym)
            else:
                np.copyto(ym, ps[0])
                for q in ps[1:]:
                    np.maximum(ym, q, out=ym)
            if wide:  # (C, N*P) -> NCHW, conv bias already in
                np.copyto(y.reshape(n, c, p)[:, lo:hi], ym.reshape(hi - lo, n, p).transpose(1, 0, 2))

        parallel(piece, shape[0], x.size)
        self._saved = (n, parts, ymax, masks)
        return y if wide else self.producer.finish(ymax, params)

    def _backward_blocked(self, dy: np.ndarray) -> np.ndarray:
        """dy (N, C, OH, OW) -> the gradient of the window-major input, in its layout."""
        n, parts, ymax, masks = self._saved
        c, kk, p = self.in_chw[0], len(parts), self.out_hw[0] * self.out_hw[1]
        wide = self.producer.layout == "unfold"
        src = dy.reshape(n, c, p)
        if wide:  # (C, N*P) blocks; dy to (C, N, P)
            d = self.buf("dy_cnp", (c, n * p))
            dx = self.buf("dx_blocked", (c, kk, n * p))
        else:  # (N, P, C) blocks; dy to (N, P, C)
            d = self.buf("dy_nhwc", (n, p, c))
            dx = self.buf("dx_blocked", (n, kk, p, c))
        outs = [dx[:, k] for k in range(kk)]
        if masks is None:
            hit = self.buf("hit", ymax.shape, np.bool_)
            free = self.buf("free", ymax.shape, np.bool_)  # windows whose gradient is still unassigned

        def piece(lo: int, hi: int) -> None:  # rows lo..hi-1 of every block (channels or examples)
            dd = d[lo:hi]
            if wide:
                np.copyto(dd.reshape(hi - lo, n, p), src[:, lo:hi].transpose(1, 0, 2))
            else:
                np.copyto(dd, src[lo:hi].transpose(0, 2, 1))
            os_ = [o[lo:hi] for o in outs]
            if masks is not None:
                top, left01, left23 = (mk[lo:hi] for mk in masks)
                o0, o1, o2, o3 = os_
                np.multiply(dd, top, out=o1)       # dtop, for now
                np.subtract(dd, o1, out=o3)        # dbot, for now
                np.multiply(o1, left01, out=o0)
                o1 -= o0
                np.multiply(o3, left23, out=o2)
                o3 -= o2
                return
            _route_to_first_max([q[lo:hi] for q in parts], ymax[lo:hi], dd, os_, hit[lo:hi], free[lo:hi])

        parallel(piece, d.shape[0], dx.size)
        return dx

    def _covers_all(self) -> bool:
        """True when the windows tile the input exactly, without overlap: every dx is written once."""
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        _, h, w = self.in_chw
        return not any(self.pads) and (kh, kw) == (sh, sw) and (oh * kh, ow * kw) == (h, w)

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        if self.producer is not None:
            return self._backward_blocked(dy)
        if self._tiles():
            return self._backward_tiled(dy)
        xp, y = self._saved
        dxp = self.buf("dxp", xp.shape)
        tiled = self._covers_all()
        if not tiled:
            dxp.fill(0)
        hit = self.buf("hit", y.shape, np.bool_)
        free = self.buf("free", y.shape, np.bool_)  # windows whose gradient is still unassigned
        tmp = self.buf("tmp", y.shape)
        offsets = _window_views(xp, self.kernel, self.stride, self.out_hw)
        targets = _window_views(dxp, self.kernel, self.stride, self.out_hw)
        for k, ((_, _, xv), (_, _, dv)) in enumerate(zip(offsets, targets)):
            np.equal(xv, y, out=hit)
            if k == 0:
                np.logical_not(hit, out=free)
            else:
                hit &= free
                free ^= hit
            if tiled:
                np.multiply(dy, hit, out=dv)
            else:
                dv += np.multiply(dy, hit, out=tmp)
        return self._unpad(dxp)


def _route_to_first_max(parts, y: np.ndarray, dy: np.ndarray, outs, hit: np.ndarray, free: np.ndarray) -> None:
    """outs[k] = dy where offset k holds its window's first maximum (in offset order), else 0.

    ``parts[k]``: the inputs at window offset k, shaped like ``y`` (the maxima) and ``dy``;
    ``hit``/``free``: boolean scratch of that shape ("free": windows not yet assigned).
    """
    for k, (part, out) in enumerate(zip(parts, outs)):
        np.equal(part, y, out=hit)
        if k == 0:
            np.logical_not(hit, out=free)
        else:
            np.logical_and(hit, free, out=hit)
            np.logical_xor(free, hit, out=free)
        np.multiply(dy, hit, out=out)


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
        self.inv_count = (1.0 / count).astype(self.dtype)  # (OH, OW)

    def forward(self, x, params, training, rng):
        x = self._check(x)
        xp = self._padded_nchw(x, 0.0)
        y = self.buf("y", x.shape[:2] + self.out_hw)
        views = _window_views(xp, self.kernel, self.stride, self.out_hw)
        np.copyto(y, next(views)[2])
        for _, _, view in views:
            y += view
        y *= self.inv_count
        self._n = x.shape[0]
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        g = np.multiply(dy, self.inv_count, out=self.buf("g", dy.shape))
        dxp = self.buf("dxp", (self._n, self.in_chw[0]) + self.padded_hw)
        dxp.fill(0)
        for _, _, view in _window_views(dxp, self.kernel, self.stride, self.out_hw):
            view += g
        return self._unpad(dxp)


@register("global_avgpool")
class GlobalAvgPool(_WindowOp):
    """Mean over height and width: x (N, C, H, W) -> y (N, C); dx = dy / (H*W) everywhere."""

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        Op.__init__(self, layer, dtype)
        self.in_chw = tuple(layer.in_shape)

    def forward(self, x, params, training, rng):
        x = self._check(x)
        self._n = x.shape[0]
        return np.mean(x, axis=(2, 3), dtype=self.dtype, out=self.buf("y", x.shape[:2]))

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        _, h, w = self.in_chw
        dx = self.buf("dx", (self._n,) + self.in_chw)
        np.multiply(dy[:, :, None, None], self.dtype.type(1.0 / (h * w)), out=dx)
        return dx


@register("global_maxpool")
class GlobalMaxPool(_WindowOp):
    """Max over height and width: x (N, C, H, W) -> y (N, C).

    Backward routes dy to ONE pixel per (example, channel), the first maximum in row-major
    order (as maxpool and ONNX's GlobalMaxPool gradient convention); the rest get 0.
    """

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        Op.__init__(self, layer, dtype)
        self.in_chw = tuple(layer.in_shape)

    def forward(self, x, params, training, rng):
        flat = self._check(x).reshape(x.shape[0], x.shape[1], -1)
        self.arg = np.argmax(flat, axis=2)[:, :, None]
        return np.take_along_axis(flat, self.arg, axis=2)[:, :, 0]

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        n, c = dy.shape
        dx = self.buf("dx", (n, c, self.in_chw[1] * self.in_chw[2]))
        dx.fill(0)
        np.put_along_axis(dx, self.arg, dy[:, :, None], axis=2)
        return dx.reshape((n,) + self.in_chw)
