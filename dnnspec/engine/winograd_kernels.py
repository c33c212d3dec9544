"""Compiled tile transforms of the Winograd convolution F(4x4, 3x3) (conv.py's "winograd" path).

Imported only through :func:`dnnspec.engine.conv.winograd_kernels`, when numba is installed
(the ``fast`` extra) and a 3x3, stride-1 convolution trains; ``dnnspec check`` and
inference never import it.

A 6x6 input tile ``d`` and a 3x3 kernel ``g`` give a 4x4 output tile (Lavin & Gray 2016)::

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (. elementwise over the 36 positions)

so that the 36 products of the 6x6 tiles, summed over input channels, are 36 independent
matrix products (conv.py). This module holds the four transforms between images and tiles,
each a pair of 1-D transforms (rows, then columns) vectorised along the innermost axis,
which is channels: images are NHWC here, tiles ``(36, T, channels)`` with tile ``t = (n, th, tw)``:

* :func:`input_tiles`        V = B^T d B            padded NHWC input -> (36, T, C)
* :func:`output_tiles`       Y = A^T M A            (36, T, F) -> NHWC output on the 4x4 grid
* :func:`output_tiles_grad`  dM = A dY A^T          NHWC output gradient -> (36, T, F)

The input gradient of a stride-1 convolution is itself a 3x3 convolution (of the padded
output gradient with the flipped, transposed kernel), so it takes input_tiles and
output_tiles again (conv.py).

Each works on examples ``lo..hi-1`` only and writes their rows of the outputs, so the
engine's threads run disjoint pieces; additions happen in a fixed order (tiles row-major),
so the bits do not depend on the split. The options are fused_kernels.jit's: no fastmath,
IEEE division, ``nogil``, cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

from .crew_kernels import _call_gemm
from .fused_kernels import jit

_inline = numba.njit(inline="always", error_model="numpy")


@_inline
def _bt(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5):
    """o = B^T i along the rows: 6 vectors in, 6 out (B^T of F(4, 3), points 0, +-1, +-2)."""
    for c in range(i0.shape[0]):
        a0, a1, a2, a3, a4, a5 = i0[c], i1[c], i2[c], i3[c], i4[c], i5[c]
        o0[c] = 4 * a0 - 5 * a2 + a4
        o1[c] = -4 * a1 - 4 * a2 + a3 + a4
        o2[c] = 4 * a1 - 4 * a2 - a3 + a4
        o3[c] = -2 * a1 - a2 + 2 * a3 + a4
        o4[c] = 2 * a1 - a2 - 2 * a3 + a4
        o5[c] = 4 * a1 - 5 * a3 + a5


@_inline
def _at(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3):
    """o = A^T i: 6 vectors in, 4 out."""
    for c in range(i0.shape[0]):
        a0, a1, a2, a3, a4, a5 = i0[c], i1[c], i2[c], i3[c], i4[c], i5[c]
        o0[c] = a0 + a1 + a2 + a3 + a4
        o1[c] = a1 - a2 + 2 * a3 - 2 * a4
        o2[c] = a1 + a2 + 4 * a3 + 4 * a4
        o3[c] = a1 - a2 + 8 * a3 - 8 * a4 + a5


@_inline
def _a(i0, i1, i2, i3, o0, o1, o2, o3, o4, o5):
    """o = A i (the transpose of :func:`_at`): 4 vectors in, 6 out."""
    for c in range(i0.shape[0]):
        a0, a1, a2, a3 = i0[c], i1[c], i2[c], i3[c]
        o0[c] = a0
        o1[c] = a0 + a1 + a2 + a3
        o2[c] = a0 - a1 + a2 - a3
        o3[c] = a0 + 2 * a1 + 4 * a2 + 8 * a3
        o4[c] = a0 - 2 * a1 + 4 * a2 - 8 * a3
        o5[c] = a3


@jit
def input_tiles(xw, v, lo, hi, th_n, tw_n):
    """V (36, T, C) = B^T d B of every 6x6 tile of xw (N, rows, cols, C), zero-padded NHWC.

    Tile (th, tw) starts at row 4*th, column 4*tw (rows >= 4*TH + 2, cols >= 4*TW + 2). Per
    tile row: the row transform over the whole width at once, then the column transform
    tile by tile.
    """
    n_all, hp, wp, c = xw.shape
    rows = xw.reshape(n_all * hp, wp * c)
    v2 = v.reshape(36, -1)
    r = np.empty((6, wp * c), xw.dtype)
    for n in range(lo, hi):
        for th in range(th_n):
            q = n * hp + 4 * th
            _bt(rows[q], rows[q + 1], rows[q + 2], rows[q + 3], rows[q + 4], rows[q + 5],
                r[0], r[1], r[2], r[3], r[4], r[5])
            for tw in range(tw_n):
                t = ((n * th_n + th) * tw_n + tw) * c
                p = 4 * tw * c
                for k in range(6):
                    rk = r[k]
                    _bt(rk[p:p + c], rk[p + c:p + 2 * c], rk[p + 2 * c:p + 3 * c], rk[p + 3 * c:p + 4 * c],
                        rk[p + 4 * c:p + 5 * c], rk[p + 5 * c:p + 6 * c],
                        v2[6 * k, t:t + c], v2[6 * k + 1, t:t + c], v2[6 * k + 2, t:t + c],
                        v2[6 * k + 3, t:t + c], v2[6 * k + 4, t:t + c], v2[6 * k + 5, t:t + c])
    return 0


@jit
def output_tiles(m, yw, lo, hi, th_n, tw_n):
    """yw (N, 4*TH, 4*TW, F) = A^T M A of every tile of M (36, T, F): the output on the 4x4 grid, NHWC."""
    n_all, oh, ow, f = yw.shape
    rows = yw.reshape(n_all * oh, ow * f)
    m2 = m.reshape(36, -1)
    s = np.empty((6, ow * f), yw.dtype)
    for n in range(lo, hi):
        for th in range(th_n):
            for tw in range(tw_n):
                t = ((n * th_n + th) * tw_n + tw) * f
                p = 4 * tw * f
                for k in range(6):
                    sk = s[k]
                    _at(m2[6 * k, t:t + f], m2[6 * k + 1, t:t + f], m2[6 * k + 2, t:t + f],
                        m2[6 * k + 3, t:t + f], m2[6 * k + 4, t:t + f], m2[6 * k + 5, t:t + f],
                        sk[p:p + f], sk[p + f:p + 2 * f], sk[p + 2 * f:p + 3 * f], sk[p + 3 * f:p + 4 * f])
            q = n * oh + 4 * th
            _at(s[0], s[1], s[2], s[3], s[4], s[5], rows[q], rows[q + 1], rows[q + 2], rows[q + 3])
    return 0


@jit
def output_tiles_grad(dyw, dm, lo, hi, th_n, tw_n, r0, c0):
    """dM (36, T, F) = A dY A^T of every 4x4 tile of the output gradient, NHWC in dyw (N, rows, cols, F).

    Tile (th, tw) starts at row r0 + 4*th, column c0 + 4*tw; dyw holds zeros past the output.
    """
    n_all, hp, wp, f = dyw.shape
    rows = dyw.reshape(n_all * hp, wp * f)
    m2 = dm.reshape(36, -1)
    s = np.empty((6, 4 * tw_n * f), dyw.dtype)
    for n in range(lo, hi):
        for th in range(th_n):
            q = n * hp + r0 + 4 * th
            a = c0 * f
            b = a + 4 * tw_n * f
            _a(rows[q, a:b], rows[q + 1, a:b], rows[q + 2, a:b], rows[q + 3, a:b], s[0], s[1], s[2], s[3], s[4], s[5])
            for tw in range(tw_n):
                t = ((n * th_n + th) * tw_n + tw) * f
                p = 4 * tw * f
                for k in range(6):
                    sk = s[k]
                    _a(sk[p:p + f], sk[p + f:p + 2 * f], sk[p + 2 * f:p + 3 * f], sk[p + 3 * f:p + 4 * f],
                       m2[6 * k, t:t + f], m2[6 * k + 1, t:t + f], m2[6 * k + 2, t:t + f],
                       m2[6 * k + 3, t:t + f], m2[6 * k + 4, t:t + f], m2[6 * k + 5, t:t + f])
    return 0


#: G of F(4, 3): U = G g G^T takes a 3x3 kernel to its 6x6 tile (conv.py applies it with NumPy).
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


# --- the 36 products of a run, straight to BLAS ------------------------------------------

_NO_TRANS, _TRANS = 111, 112  # CBLAS_TRANSPOSE


@_inline
def _gemm36(addr, one, ta, rows, cols, inner, a, a_off, lda, b, b_off, ldb, c, c_off, ldc):
    """C[i] = op(A[i]) @ B[i] for the 36 tile positions i, row-major, by ``cblas_?gemm`` (ILP64) at ``addr``.

    a, b, c: arrays whose axis 0 is the position; a_off, b_off, c_off: byte offsets of the
    run's first row inside each position's block.
    """
    p = np.empty(11, np.int64)
    for i in range(36):
        p[0] = ta
        p[1] = _NO_TRANS
        p[2] = rows
        p[3] = cols
        p[4] = inner
        p[5] = a.ctypes.data + i * a.strides[0] + a_off
        p[6] = lda
        p[7] = b.ctypes.data + i * b.strides[0] + b_off
        p[8] = ldb
        p[9] = c.ctypes.data + i * c.strides[0] + c_off
        p[10] = ldc
        _call_gemm(addr, p, 0, one)


@jit
def forward_run(xw, v, u, m, yw, lo, hi, th_n, tw_n, addr, one):
    """One run of examples lo..hi-1: V = B^T d B, M = V @ U (36 products), Y = A^T M A (conv.py's forward)."""
    input_tiles(xw, v, lo, hi, th_n, tw_n)
    per, c, f, size = th_n * tw_n, v.shape[2], m.shape[2], v.itemsize
    t0 = lo * per
    _gemm36(addr, one, _NO_TRANS, (hi - lo) * per, f, c, v, t0 * c * size, c, u, 0, f, m, t0 * f * size, f)
    output_tiles(m, yw, lo, hi, th_n, tw_n)
    return 0


@jit
def backward_run(dyp, v, m, du, part, first, ud, vd, md, dxw, lo, hi, th_n, tw_n, thx, twx, r0, c0, need_dx,
                 addr, one):
    """One run of the backward: dM = A dY A^T, dU = V^T @ dM into ``du`` (``first``) or added to it
    through ``part``; with need_dx the input gradient's convolution (tiles of dyp, products with
    ud, output tiles into dxw). vd/md may be m/v."""
    output_tiles_grad(dyp, m, lo, hi, th_n, tw_n, r0, c0)
    per, c, f, size = th_n * tw_n, v.shape[2], m.shape[2], v.itemsize
    t0 = lo * per
    out = du if first else part
    _gemm36(addr, one, _TRANS, c, f, (hi - lo) * per, v, t0 * c * size, c, m, t0 * f * size, f, out, 0, f)
    if not first:
        d, q = du.reshape(-1), part.reshape(-1)
        for i in range(d.size):
            d[i] += q[i]
    if need_dx:
        input_tiles(dyp, vd, lo, hi, thx, twx)
        perx = thx * twx
        t0 = lo * perx
        _gemm36(addr, one, _NO_TRANS, (hi - lo) * perx, c, f, vd, t0 * f * size, f, ud, 0, c, md, t0 * c * size, c)
        output_tiles(md, dxw, lo, hi, thx, twx)
    return 0
