"""One ONNX converter per layer kind, found by the kind's name in :data:`CONVERTERS`.

A converter reads one :class:`dnnspec.ir.Layer` and the trained parameters and writes
nodes into a :class:`~dnnspec.export.builder.GraphBuilder` (or, for the affine layers,
hands it an affine map to fold). Afterwards ``g.shape`` is the layer's output shape.
``CONVERTERS`` is keyed by the kinds of :mod:`dnnspec.registry` (``@converter("dense")``
refuses a name the registry does not know); tests/test_registry.py checks that every
registered kind has a converter.

=================== ===============================================================
kind                ONNX
=================== ===============================================================
dense               Gemm (MatMul + Add with ``dense_op="matmul"``, for quantization)
conv2d              Conv, explicit pads from :func:`dnnspec.shapes.conv_pads` (of the dilated
                    kernel), dilations and group when set
maxpool / avgpool   MaxPool / AveragePool (count_include_pad=0)
global_avgpool      GlobalAveragePool, Flatten
global_maxpool      GlobalMaxPool, Flatten
layernorm           LayerNormalization (axis=1; gamma, beta broadcast to C, H, W) from
                    opset 17; below it ReduceMean, Sub, Mul, Add, Sqrt, Div, Mul, Add
flatten             Flatten (nothing on vectors)
batchnorm           folded (into the Gemm/Conv before it, else the next, else Mul+Add),
                    or BatchNormalization with ``fold=False``
dropout             nothing (inverted, also channels=true); keep probability folded (scale mode)
relu, sigmoid, ...  Relu, LeakyRelu, Elu, Softplus, Sigmoid, Tanh, Softmax
gelu                Gelu from opset 20; below it 0.5 * x * (1 + Erf(x / sqrt 2))
silu                Mul(x, Sigmoid(x))
selu                Selu with the engine's alpha and lambda
learned alpha       PRelu (leaky); Elu with the trained alpha (per layer) or
                    PRelu(Elu(x, 1), alpha) (per channel: equal, since Elu(x, 1) < 0 iff x < 0)
add                 Add, pairwise left to right (the engine's order of summation)
concat              Concat on axis 1 (channels or features)
=================== ===============================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import registry
from ..ir import Layer
from ..shapes import conv_pads
from .builder import GraphBuilder, Linear

Params = dict[str, np.ndarray]
Converter = Callable[[GraphBuilder, Layer, Params, bool], None]
CONVERTERS: dict[str, Converter] = {}


def converter(*kinds: str) -> Callable[[Converter], Converter]:
    """Register a function as the ONNX converter of these layer kinds (registry names)."""
    unknown = [k for k in kinds if k not in registry.KINDS]
    if unknown:
        raise ValueError(f"ONNX converter for unknown layer kind {unknown[0]!r}: register the kind in "
                         "dnnspec.registry first")

    def deco(fn: Converter) -> Converter:
        for k in kinds:
            CONVERTERS[k] = fn
        return fn

    return deco


def _f64(params: Params, name: str) -> np.ndarray:
    return np.asarray(params[name], dtype=np.float64)


def _bias(layer: Layer, params: Params) -> np.ndarray | None:
    key = f"{layer.name}.bias"
    return _f64(params, key) if layer.options.get("bias", True) and key in params else None


def _window_attrs(layer: Layer) -> dict[str, Any]:
    """kernel_shape, strides, pads (over the dilated kernel for conv2d); dilations and group when not 1."""
    _, h, w = layer.in_shape
    opts = dict(layer.options)
    attrs = {"kernel_shape": list(opts["kernel"]), "strides": list(opts["stride"]),
             "pads": list(conv_pads(registry.dilated(opts) if layer.kind == "conv2d" else opts, h, w))}
    if tuple(opts.get("dilation", (1, 1))) != (1, 1):
        attrs["dilations"] = list(opts["dilation"])
    if opts.get("groups", 1) != 1:
        attrs["group"] = int(opts["groups"])
    return attrs


@converter("dense")
def dense(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """y = x W + b: Gemm(x, W, b), W is (in, units)."""
    g.open_linear(Linear(layer.name, "Gemm", _f64(params, f"{layer.name}.kernel"), _bias(layer, params)))
    g.shape = layer.out_shape


@converter("conv2d")
def conv2d(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Conv with kernel (filters, in_channels, kh, kw) and explicit pads (top, left, bottom, right)."""
    attrs = _window_attrs(layer)
    if "group" in attrs:  # a grouped kernel (F, C/G, kh, kw) cannot absorb a per-input-channel map: write it
        g.materialize()
    g.open_linear(Linear(layer.name, "Conv", _f64(params, f"{layer.name}.kernel"), _bias(layer, params),
                         attrs, padded=any(attrs["pads"])))
    g.shape = layer.out_shape


@converter("maxpool")
def maxpool(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    g.before(carry=True, positive=True)
    g.node("MaxPool", [g.x], layer.name, **_window_attrs(layer))
    g.shape = layer.out_shape


@converter("avgpool")
def avgpool(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    g.before(carry=True)
    g.node("AveragePool", [g.x], layer.name, count_include_pad=0, **_window_attrs(layer))
    g.shape = layer.out_shape


@converter("global_avgpool")
def global_avgpool(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """(N, C, H, W) -> GlobalAveragePool (N, C, 1, 1) -> Flatten (N, C)."""
    g.before(carry=True)
    g.node("GlobalAveragePool", [g.x], f"{layer.name}/pooled")
    g.node("Flatten", [g.x], layer.name, axis=1)
    g.shape = layer.out_shape


@converter("global_maxpool")
def global_maxpool(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """(N, C, H, W) -> GlobalMaxPool (N, C, 1, 1) -> Flatten (N, C)."""
    g.before(carry=True, positive=True)
    g.node("GlobalMaxPool", [g.x], f"{layer.name}/pooled")
    g.node("Flatten", [g.x], layer.name, axis=1)
    g.shape = layer.out_shape


@converter("layernorm")
def layernorm(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """y = gamma (x - mean) / sqrt(var + eps) + beta over each example's features (axes 1..)."""
    n, shape, eps = layer.name, tuple(layer.in_shape), float(layer.options["eps"])
    g.before()
    # per-channel gamma and beta broadcast to the normalised shape (C, H, W) that ONNX expects
    full = {p: np.broadcast_to(_f64(params, f"{n}.{p}").reshape((-1,) + (1,) * (len(shape) - 1)), shape)
            for p in ("gamma", "beta")}
    gamma, beta = g.const(f"{n}.gamma", full["gamma"]), g.const(f"{n}.beta", full["beta"])
    if getattr(g, "opset", 17) >= 17:
        g.node("LayerNormalization", [g.x, gamma, beta], n, axis=1, epsilon=eps)
        return
    x, axes = g.x, list(range(1, len(shape) + 1))
    mean = g.node("ReduceMean", [x], f"{n}/mean", axes=axes, keepdims=1)
    xc = g.node("Sub", [x, mean], f"{n}/centred")
    var = g.node("ReduceMean", [g.node("Mul", [xc, xc], f"{n}/squares")], f"{n}/var", axes=axes, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(f"{n}.eps", np.array(eps))], f"{n}/var_eps")], f"{n}/std")
    xhat = g.node("Div", [xc, std], f"{n}/xhat")
    g.node("Add", [g.node("Mul", [xhat, gamma], f"{n}/scaled"), beta], n)


@converter("flatten")
def flatten(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    if len(layer.in_shape) == 1:
        return
    g.before(carry=True)
    g.flatten_pending(layer.out_shape[0])
    g.node("Flatten", [g.x], layer.name, axis=1)
    g.shape = layer.out_shape


@converter("batchnorm")
def batchnorm(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Inference batch norm y = gamma (x - mean) / sqrt(var + eps) + beta, an affine map per channel."""
    n = layer.name
    if not fold:
        g.materialize()
        inputs = [g.x] + [g.const(f"{n}.{p}", params[f"{n}.{p}"])
                          for p in ("gamma", "beta", "running_mean", "running_var")]
        g.node("BatchNormalization", inputs, n, epsilon=float(layer.options["eps"]))
        return
    a = _f64(params, f"{n}.gamma") / np.sqrt(_f64(params, f"{n}.running_var") + layer.options["eps"])
    g.affine(a, _f64(params, f"{n}.beta") - a * _f64(params, f"{n}.running_mean"), n, into_previous=True)


@converter("dropout")
def dropout(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Inverted dropout is the identity at inference; scale mode multiplies by the keep probability."""
    if layer.options["mode"] == "inverted" or layer.options["rate"] == 0:
        return
    c = g.shape[0]
    g.affine(np.full(c, 1.0 - layer.options["rate"]), np.zeros(c), layer.name, into_previous=False)


def elementwise(op_type: str, positive: bool = False) -> Converter:
    """The converter of an activation that is one ONNX node without attributes (Relu, Sigmoid, ...).

    ``positive``: f(a*x) = a*f(x) for a > 0 (relu), so a pending scale with no shift is
    carried through it rather than written before it.
    """

    def convert(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
        g.before(positive=positive)
        g.node(op_type, [g.x], layer.name)

    convert.__doc__ = f"{op_type}(x)"
    return convert


converter("relu")(elementwise("Relu", positive=True))
converter("softplus")(elementwise("Softplus"))
converter("sigmoid")(elementwise("Sigmoid"))
converter("tanh")(elementwise("Tanh"))


@converter("gelu")
def gelu(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Gelu (exact, approximate="none") from opset 20; earlier, x * 0.5 * (1 + Erf(x / sqrt 2))."""
    g.before()
    if getattr(g, "opset", 20) >= 20:
        g.node("Gelu", [g.x], layer.name)
        return
    x, n = g.x, layer.name
    e = g.node("Erf", [g.node("Mul", [x, g.const(f"{n}.rsqrt2", np.array(1 / np.sqrt(2)))], f"{n}/scaled")],
               f"{n}/erf")
    half = g.node("Mul", [g.node("Add", [e, g.const(f"{n}.one", np.array(1.0))], f"{n}/erf1"),
                          g.const(f"{n}.half", np.array(0.5))], f"{n}/Phi")
    g.node("Mul", [x, half], n)


@converter("silu")
def silu(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """x * Sigmoid(x)."""
    g.before()
    x = g.x
    g.node("Mul", [x, g.node("Sigmoid", [x], f"{layer.name}/sigmoid")], layer.name)


@converter("selu")
def selu(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Selu with alpha and gamma (our lambda) as the engine's."""
    g.before()
    g.node("Selu", [g.x], layer.name, alpha=registry.SELU_ALPHA, gamma=registry.SELU_LAMBDA)


@converter("softmax")
def softmax(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    g.before()
    g.node("Softmax", [g.x], layer.name, axis=-1)


def _slope(g: GraphBuilder, layer: Layer, params: Params) -> str:
    """The learned alpha as a PRelu slope: (1,) per layer; (F,) or (C, 1, 1) per channel."""
    alpha = np.asarray(params[f"{layer.name}.alpha"], np.float32)
    if alpha.size > 1:
        alpha = g.channel_shape(alpha)
    return g.const(f"{layer.name}.alpha", alpha)


@converter("leaky_relu")
def leaky_relu(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    g.before(positive=True)
    if layer.options.get("learn"):
        g.node("PRelu", [g.x, _slope(g, layer, params)], layer.name)
    else:
        g.node("LeakyRelu", [g.x], layer.name, alpha=float(layer.options["alpha"]))


@converter("elu")
def elu(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    g.before()
    if not layer.options.get("learn"):
        g.node("Elu", [g.x], layer.name, alpha=float(layer.options["alpha"]))
    elif layer.options["per"] == "layer":
        g.node("Elu", [g.x], layer.name, alpha=float(np.asarray(params[f"{layer.name}.alpha"]).reshape(-1)[0]))
    else:
        g.node("Elu", [g.x], f"{layer.name}/elu1", alpha=1.0)
        g.node("PRelu", [g.x, _slope(g, layer, params)], layer.name)


@converter("add")
def add(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """x_1 + x_2 + ... as Add nodes, left to right; each input written out first (nothing held back)."""
    xs = [g.value(name) for name in layer.inputs]
    total = xs[0]
    for k, x in enumerate(xs[1:], 2):
        total = g.node("Add", [total, x], layer.name if k == len(xs) else f"{layer.name}/sum{k}")
    g.shape = layer.out_shape


@converter("concat")
def concat(g: GraphBuilder, layer: Layer, params: Params, fold: bool) -> None:
    """Concat on axis 1: channels of (N, C, H, W), features of (N, F)."""
    g.node("Concat", [g.value(name) for name in layer.inputs], layer.name, axis=1)
    g.shape = layer.out_shape
