"""Shape rules, parameter lists and FLOP counts, one entry per layer kind.

Shapes are per example: ``(F,)`` for vectors, ``(C, H, W)`` for images. A rule that
cannot apply raises :class:`~dnnspec.errors.ShapeError` with the shape at that point
in its message; the front end adds the source position.
"""

from __future__ import annotations

from typing import Any

from .errors import ShapeError
from .ir import ParamSpec

Shape = tuple[int, ...]


def fmt_shape(shape: Shape) -> str:
    """[1, 28, 28]: how messages show a per-example shape."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _need_image(kind: str, shape: Shape) -> None:
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


def _window(kind: str, opts: dict[str, Any], shape: Shape) -> Shape:
    _need_image(kind, shape)
    c, h, w = shape
    kh, kw = opts["kernel"]
    sh, sw = opts["stride"]
    t, left, b, r = conv_pads(opts, h, w)
    if kh > h + t + b or kw > w + left + r:
        raise ShapeError(f"{kind} kernel {kh}x{kw} is larger than its input {h}x{w} (shape {fmt_shape(shape)})",
                         hint="use a smaller kernel, padding=same, or remove a pooling layer before it",
                         option="kernel")
    if kind != "conv2d" and (t >= kh or left >= kw):
        raise ShapeError(f"{kind} padding must be smaller than the kernel {kh}x{kw}", option="padding")
    oh = conv_out_side(h, kh, sh, t, b)
    ow = conv_out_side(w, kw, sw, left, r)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{kind} shrinks the input {fmt_shape(shape)} to nothing", option="kernel")
    out_c = opts["filters"] if kind == "conv2d" else c
    return (out_c, oh, ow)


def out_shape(kind: str, opts: dict[str, Any], shape: Shape) -> Shape:
    """The output shape of one layer, or ShapeError."""
    if kind == "dense":
        if len(shape) != 1:
            raise ShapeError(f"dense needs a vector input, but the input here has shape {fmt_shape(shape)}",
                             hint="add 'flatten' (or 'global_avgpool') before this dense layer")
        return (opts["units"],)
    if kind in ("conv2d", "maxpool", "avgpool"):
        return _window(kind, opts, shape)
    if kind == "global_avgpool":
        _need_image(kind, shape)
        return (shape[0],)
    if kind == "flatten":
        n = 1
        for d in shape:
            n *= d
        return (n,)
    if kind == "softmax" and len(shape) != 1:
        raise ShapeError(f"softmax needs a vector input, but the input here has shape {fmt_shape(shape)}",
                         hint="add 'flatten' and a dense layer before softmax")
    return shape


def channels(shape: Shape) -> int:
    """Features for vectors, channels for images: the axis batch norm and per-channel alphas use."""
    return shape[0]


def param_specs(kind: str, name: str, opts: dict[str, Any], in_shape: Shape, out: Shape) -> tuple[ParamSpec, ...]:
    """The parameters of one layer, in a fixed order."""
    if kind in ("dense", "conv2d"):
        if kind == "dense":
            kshape: Shape = (in_shape[0], out[0])
            fan_in, fan_out = in_shape[0], out[0]
            n_out = out[0]
        else:
            kh, kw = opts["kernel"]
            kshape = (opts["filters"], in_shape[0], kh, kw)
            fan_in, fan_out = in_shape[0] * kh * kw, opts["filters"] * kh * kw
            n_out = opts["filters"]
        specs = [ParamSpec(f"{name}.kernel", kshape, opts["init"], opts["fan"], fan_in, fan_out,
                           std=opts.get("std", 0.01), limit=opts.get("limit", 0.05))]
        if opts.get("bias", True):
            specs.append(ParamSpec(f"{name}.bias", (n_out,), "zeros"))
        return tuple(specs)
    if kind == "batchnorm":
        c = (channels(in_shape),)
        return (ParamSpec(f"{name}.gamma", c, "ones"), ParamSpec(f"{name}.beta", c, "zeros"),
                ParamSpec(f"{name}.running_mean", c, "zeros", trainable=False),
                ParamSpec(f"{name}.running_var", c, "ones", trainable=False))
    if kind in ("leaky_relu", "elu") and opts.get("learn"):
        c = (1,) if opts["per"] == "layer" else (channels(in_shape),)
        return (ParamSpec(f"{name}.alpha", c, "const", value=float(opts["alpha"])),)
    return ()


def _size(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def flops(kind: str, opts: dict[str, Any], in_shape: Shape, out: Shape) -> int:
    """Forward FLOPs per example (a multiply-add counts 2)."""
    if kind == "dense":
        return 2 * in_shape[0] * out[0] + (out[0] if opts.get("bias", True) else 0)
    if kind == "conv2d":
        kh, kw = opts["kernel"]
        return 2 * in_shape[0] * kh * kw * _size(out) + (_size(out) if opts.get("bias", True) else 0)
    if kind in ("maxpool", "avgpool"):
        kh, kw = opts["kernel"]
        return kh * kw * _size(out)
    if kind == "global_avgpool":
        return _size(in_shape)
    if kind == "batchnorm":
        return 2 * _size(out)
    if kind in ("flatten", "dropout"):
        return 0
    if kind in ("softmax", "elu", "softplus", "sigmoid", "tanh"):
        return 4 * _size(out)
    return _size(out)
