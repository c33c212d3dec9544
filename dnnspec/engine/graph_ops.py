"""Engine ops that join several inputs: add and concat (graphs: residual blocks, branches).

They follow :mod:`dnnspec.engine.base` with a list for the inputs: ``forward(xs, ...)``
takes the arrays of the layer's ``inputs`` in order and ``backward(dy, ...)`` returns one
gradient per input. Like every op, they write into their own buffers, never into their
inputs or ``dy``: an input read by several layers, or a ``dy`` handed to several inputs,
stays intact. The network sums the gradients of an output that several layers read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Op, register
from .threads import parallel


@register("add")
class Add(Op):
    """y = x_1 + x_2 + ... + x_k, all of one shape (N, ...); dx_i = dy for every i.

    The gradients are ``dy`` itself, not copies: no op writes into the dy it is given, and
    the network copies before it sums (see engine/net.py).
    """

    def forward(self, xs, params, training, rng):
        y = self.buf("y", xs[0].shape)

        def piece(lo: int, hi: int) -> None:  # rows lo..hi-1, summed left to right as written
            np.add(xs[0][lo:hi], xs[1][lo:hi], out=y[lo:hi])
            for x in xs[2:]:
                y[lo:hi] += x[lo:hi]

        parallel(piece, len(y), y.size * len(xs))
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        return [dy] * len(self.layer.inputs)


@register("concat")
class Concat(Op):
    """y = [x_1, ..., x_k] along axis 1: channels (N, C_i, H, W) or features (N, F_i).

    Backward: dx_i = dy[:, offset_i : offset_i + C_i], copied into a C-contiguous buffer
    (the ops downstream in the backward pass expect contiguous gradients).
    """

    def __init__(self, layer: Any, dtype: Any = np.float32):
        super().__init__(layer, dtype)
        widths = [shape[0] for shape in layer.in_shapes]
        self.bounds = list(zip(np.cumsum([0, *widths[:-1]]).tolist(), np.cumsum(widths).tolist()))

    def forward(self, xs, params, training, rng):
        n = xs[0].shape[0]
        y = self.buf("y", (n, *self.layer.out_shape))
        for x, (lo, hi) in zip(xs, self.bounds):
            np.copyto(y[:, lo:hi], x)
        return y

    def backward(self, dy, params, grads):
        if not self.need_dx:
            return None
        out = []
        for i, (lo, hi) in enumerate(self.bounds):
            dx = self.buf(f"dx{i}", (dy.shape[0], hi - lo) + dy.shape[2:])
            np.copyto(dx, dy[:, lo:hi])
            out.append(dx)
        return out
