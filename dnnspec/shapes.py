"""Shape arithmetic shared by the layer kinds' rules (dnnspec.registry), the engine and the export.

Shapes are per example: ``(F,)`` for vectors, ``(C, H, W)`` for images. A rule that
cannot apply raises :class:`~dnnspec.errors.ShapeError` with the shape at that point
in its message; the front end adds the source position. Nothing here knows a layer
kind by name: the kinds' rules live in their registry entries.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ShapeError

Shape = tuple[int, ...]


def fmt_shape(shape: Shape) -> str:
    """[1, 28, 28]: how messages show a per-example shape."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def size(shape: Shape) -> int:
    """Elements per example: the product of the dimensions (1 for ``()``)."""
    return math.prod(shape)


def channels(shape: Shape) -> int:
    """Features for vectors, channels for images: the axis batch norm and per-channel alphas use."""
    return shape[0]


def need_image(kind: str, shape: Shape) -> None:
    """ShapeError unless ``shape`` is an image (C, H, W)."""
    if len(shape) != 3:
        raise ShapeError(f"{kind} needs an image input (C, H, W), but the input here has shape {fmt_shape(shape)}",
                         hint="use image[C, H, W] input, or dense layers for vectors")


def conv_out_side(size: int, k: int, s: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - k) // s + 1


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """ONNX SAME_UPPER: total padding so that out = ceil(size/s); the extra pixel goes at the end."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    return total // 2, total - total // 2


def conv_pads(opts: dict[str, Any], h: int, w: int) -> tuple[int, int, int, int]:
    """Explicit pads (top, left, bottom, right) for conv2d/pool options at input size (h, w)."""
    kh, kw = opts["kernel"]
    sh, sw = opts["stride"]
    pad = opts.get("padding", (0, 0))
    if pad == "valid":
        return (0, 0, 0, 0)
    if pad == "same":
        t, b = same_padding(h, kh, sh)
        left, r = same_padding(w, kw, sw)
        return (t, left, b, r)
    return (pad[0], pad[1], pad[0], pad[1])


def window_out(kind: str, opts: dict[str, Any], shape: Shape, out_channels: int | None, pooling: bool) -> Shape:
    """(C', H', W') of a sliding window (``kernel``, ``stride``, ``padding`` options) over an image.

    H' = (H + pad_top + pad_bottom - kh) // sh + 1, likewise W'; C' = ``out_channels``
    (a convolution's filters) or C (a pool). A pool's padding must be smaller than its
    window, so that every window holds a real pixel.
    """
    need_image(kind, shape)
    c, h, w = shape
    kh, kw = opts["kernel"]
    sh, sw = opts["stride"]
    t, left, b, r = conv_pads(opts, h, w)
    if kh > h + t + b or kw > w + left + r:
        raise ShapeError(f"{kind} kernel {kh}x{kw} is larger than its input {h}x{w} (shape {fmt_shape(shape)})",
                         hint="use a smaller kernel, padding=same, or remove a pooling layer before it",
                         option="kernel")
    if pooling and (t >= kh or left >= kw):
        raise ShapeError(f"{kind} padding must be smaller than the kernel {kh}x{kw}", option="padding")
    oh = conv_out_side(h, kh, sh, t, b)
    ow = conv_out_side(w, kw, sw, left, r)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{kind} shrinks the input {fmt_shape(shape)} to nothing", option="kernel")
    return (c if out_channels is None else out_channels, oh, ow)
