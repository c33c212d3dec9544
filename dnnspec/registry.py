"""One registry of layer kinds: every fact about a kind in one entry, a Keras layer expressed as data.

    kind = KINDS["dense"]
    kind.schema                                # options: types, defaults, ranges, docs (dnnspec.schema.Schema)
    out = kind.shape(opts, [in_shape])         # the shape rule, over the list of input shapes; or ShapeError
    kind.params(name, opts, [in_shape], out)   # its ParamSpecs, in a fixed order
    kind.flops(opts, [in_shape], out)          # forward FLOPs per example (a multiply-add counts 2)
    kind.scratch(opts, [in_shape], out)        # (forward, backward) scratch elements per example (dnnspec.memory)

and what the rules between layers need: ``role`` (``weighted``: a kernel whose ``init=auto``
looks at the next activation; ``activation``; ``other``: looked through), ``init_before``
(the init a weighted layer before this activation defaults to), ``prefix`` (default names
``<prefix><n>``), ``head`` (the loss it is fused with as the network's final activation,
whose input is then the logits), ``last_only`` (allowed only as the last layer, and only
before its ``head`` loss), ``complete`` (options derived from others: a pool's stride),
``inputs`` (1, or :data:`MANY`: two or more, named in the statement, like ``add a, b``).
Shapes are per example, ``(F,)`` or ``(C, H, W)``.

Readers: the front end (``LAYERS``, placement rules), :func:`dnnspec.ir.build_layers`
(names, shapes, inits, parameters, FLOPs), ``dnnspec check`` and the docs
(:func:`dnnspec.summary.option_tables`), :mod:`dnnspec.memory`. The engine's ops
(``engine/base.OPS``) and the ONNX converters (``export/converters.CONVERTERS``) are keyed
by the same names and refuse a name that is not registered; tests/test_registry.py fails
when the three key sets differ. Adding a kind: :func:`register` an entry (an activation
in one call of :func:`activation`), an engine op, a converter (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ShapeError
from .schema import (
    MAX_WIDTH,
    MAX_WINDOW,
    Bool,
    Choice,
    Float,
    Int,
    Opt,
    Padding,
    Pair,
    Schema,
    Text,
)
from .shapes import Shape, channels, conv_pads, fmt_shape, need_image, size, window_out

Opts = Mapping[str, Any]
ShapeRule = Callable[[Opts, list[Shape]], Shape]
ParamRule = Callable[[str, Opts, list[Shape], Shape], tuple["ParamSpec", ...]]
CountRule = Callable[[Opts, list[Shape], Shape], int]
ScratchRule = Callable[[Opts, list[Shape], Shape], tuple[int, int]]

WEIGHTED, ACTIVATION, OTHER = "weighted", "activation", "other"
#: ``LayerKind.inputs`` of a kind that joins two or more earlier outputs, named as its values (add, concat).
MANY = 0


class InputMismatch(ShapeError):
    """A multi-input kind's inputs ``first`` and ``second`` (indices into the list) do not fit together.

    The rule cannot name the inputs (it sees shapes only); :meth:`named` rewrites the
    message with the layer names once they are known (:func:`dnnspec.ir.build_layers`).
    """

    def __init__(self, kind: str, need: str, shapes: list[Shape], first: int, second: int, hint: str):
        self.kind, self.need, self.shapes, self.first, self.second = kind, need, list(shapes), first, second
        super().__init__(self._text(f"input {first + 1}", f"input {second + 1}"), hint)

    def _text(self, a: str, b: str) -> str:
        return (f"{self.kind} needs {self.need}, but {a} has shape {fmt_shape(self.shapes[self.first])} "
                f"and {b} has shape {fmt_shape(self.shapes[self.second])}")

    def named(self, names: list[str] | tuple[str, ...]) -> InputMismatch:
        """The same error with the inputs called by their layer names (``'bn2'``, ``'input'``)."""
        self.message = self._text(f"'{names[self.first]}'", f"'{names[self.second]}'")
        self.args = (self.message,)
        return self


@dataclass(frozen=True)
class ParamSpec:
    """One parameter array of a layer: its full name, shape, init and fans.

    ``init`` is one of :data:`INITS` without ``auto`` (plus ``ones`` and ``zeros`` for
    biases, gamma, beta and running statistics; ``const`` for learned alphas, whose
    value is ``value``). ``fan_in``/``fan_out`` count the receptive field for convs.
    """

    name: str
    shape: tuple[int, ...]
    init: str
    fan: str = "avg"
    fan_in: int = 0
    fan_out: int = 0
    trainable: bool = True
    value: float = 0.0
    std: float = 0.01
    limit: float = 0.05

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# --- default rules --------------------------------------------------------------------------


def same_shape(opts: Opts, ins: list[Shape]) -> Shape:
    """Elementwise: the output has the input's shape."""
    return ins[0]


def no_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    return ()


def per_output(flops: int) -> CountRule:
    """``flops`` per output element."""
    return lambda opts, ins, out: flops * size(out)


def scratch_per_output(forward: float, backward: float) -> ScratchRule:
    """(ceil(forward * out), ceil(backward * out)): what an elementwise op keeps per output element."""
    return lambda opts, ins, out: (math.ceil(forward * size(out)), math.ceil(backward * size(out)))


@dataclass(frozen=True)
class LayerKind:
    """Everything dnnspec knows of one layer kind except how to run it (engine op) and export it (converter).

    Rules receive the bound options (defaults filled, ``name`` set, ``complete`` applied),
    the list of input shapes (one, or two and more for ``inputs=MANY``) and the output
    shape. ``init_before`` matters for role ``activation`` only; ``head`` names a loss of
    dnnspec.schema.LOSSES; ``prefix`` defaults to the kind's name.
    """

    name: str
    schema: Schema
    shape: ShapeRule = same_shape
    params: ParamRule = no_params
    flops: CountRule = per_output(1)
    scratch: ScratchRule = scratch_per_output(1.0, 1.0)
    role: str = OTHER
    init_before: str | None = None
    prefix: str = ""
    head: str | None = None
    last_only: bool = False
    inputs: int = 1
    complete: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if self.role not in (WEIGHTED, ACTIVATION, OTHER):
            raise ValueError(f"layer kind {self.name}: role must be {WEIGHTED}, {ACTIVATION} or {OTHER}")
        if self.schema.name != self.name:
            raise ValueError(f"layer kind {self.name}: its schema is named {self.schema.name!r}")
        if not self.prefix:
            object.__setattr__(self, "prefix", self.name)


KINDS: dict[str, LayerKind] = {}


def register(kind: LayerKind) -> LayerKind:
    """Add ``kind`` to the registry (its name must be new); return it."""
    if kind.name in KINDS:
        raise ValueError(f"layer kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind added with :func:`register` (tests that add one clean up with this)."""
    del KINDS[name]


class _Schemas(Mapping):
    """``LAYERS[kind]``: the option schema of each registered kind, in registration order (a live view)."""

    def __getitem__(self, name: str) -> Schema:
        return KINDS[name].schema

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


LAYERS: Mapping[str, Schema] = _Schemas()


def prefix_of(name: str) -> str:
    """The default-name prefix of a kind (the name itself for one that is not registered)."""
    kind = KINDS.get(name)
    return kind.prefix if kind is not None else name


def is_weighted(name: str) -> bool:
    kind = KINDS.get(name)
    return kind is not None and kind.role == WEIGHTED


def takes_many(name: str) -> bool:
    """True for a kind that joins two or more inputs named in its statement (``add a, b``)."""
    kind = KINDS.get(name)
    return kind is not None and kind.inputs == MANY


def activations() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS.values() if k.role == ACTIVATION)


def head_for(loss: str) -> str | None:
    """The kind fused with ``loss`` as the network's final activation (softmax for cross_entropy), or None."""
    return next((k.name for k in KINDS.values() if k.head == loss), None)


# --- shared options --------------------------------------------------------------------------

INITS = ("auto", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform",
         "lecun_normal", "lecun_uniform", "normal", "uniform", "zeros")
FANS = ("auto", "avg", "in", "out")

INIT_OPTIONS = (
    Opt("init", Choice(INITS), "auto",
        "weight initialisation; auto picks Xavier before sigmoid/tanh/softmax, He before the ReLU family "
        "(and gelu, silu), LeCun before selu"),
    Opt("fan", Choice(FANS), "auto",
        "fan mode of the variance-scaling inits: avg = (n_in+n_out)/2 as in the lecture; in; out. "
        "auto = avg for xavier/he, in for lecun"),
    Opt("std", Float(0.0, 10.0, lo_open=True), 0.01, "standard deviation of init=normal (only)"),
    Opt("limit", Float(0.0, 10.0, lo_open=True), 0.05, "half-width of init=uniform (only)"),
)
NAME = Opt("name", Text(), None, "the layer's name; default <kind><n>, e.g. dense1")
# The inits that read each init option, and how messages name them (auto resolves to he/xavier).
# Writing one for another init is an error: it would do nothing.
INIT_OPTION_USERS = {
    "std": (("normal",), "init=normal"),
    "limit": (("uniform",), "init=uniform"),
    "fan": (("auto", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform"),
            "the xavier, he and lecun inits"),
}
_WINDOW = Opt("kernel", Pair(1, MAX_WINDOW), (2, 2), "window size")
_POOL_STRIDE = Opt("stride", Pair(1, MAX_WINDOW), None, "stride; default = kernel")


def activation(name: str, doc: str, *, init_before: str | None, flops: int = 1,
               scratch: tuple[float, float] = (1.0, 1.0), options: tuple[Opt, ...] = (),
               example: str = "", **rules: Any) -> LayerKind:
    """An elementwise activation's entry: y = f(x), same shape; ``init_before``: he_normal or xavier_normal."""
    return LayerKind(name, Schema(name, (*options, NAME), doc=doc, example=example or name),
                     flops=per_output(flops), scratch=scratch_per_output(*scratch), role=ACTIVATION,
                     init_before=init_before, **rules)


# --- the rules of the built-in kinds ---------------------------------------------------------


def _kernel(name: str, opts: Opts, shape: Shape, fan_in: int, fan_out: int, n_out: int) -> tuple[ParamSpec, ...]:
    """A weighted layer's kernel (its init and fans) and, with ``bias``, a zero bias of ``n_out``."""
    specs = [ParamSpec(f"{name}.kernel", shape, opts["init"], opts["fan"], fan_in, fan_out,
                       std=opts.get("std", 0.01), limit=opts.get("limit", 0.05))]
    if opts.get("bias", True):
        specs.append(ParamSpec(f"{name}.bias", (n_out,), "zeros"))
    return tuple(specs)


def _dense_shape(opts: Opts, ins: list[Shape]) -> Shape:
    if len(ins[0]) != 1:
        raise ShapeError(f"dense needs a vector input, but the input here has shape {fmt_shape(ins[0])}",
                         hint="add 'flatten' (or 'global_avgpool') before this dense layer")
    return (opts["units"],)


def _dense_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    """kernel (in, units), bias (units,)."""
    n_in, n_out = ins[0][0], out[0]
    return _kernel(name, opts, (n_in, n_out), n_in, n_out, n_out)


def _dense_flops(opts: Opts, ins: list[Shape], out: Shape) -> int:
    return 2 * ins[0][0] * out[0] + (out[0] if opts.get("bias", True) else 0)


def _dense_scratch(opts: Opts, ins: list[Shape], out: Shape) -> tuple[int, int]:
    """Its output forward, its input gradient backward."""
    return size(out), size(ins[0])


def dilated(opts: Opts) -> dict[str, Any]:
    """conv2d options with ``kernel`` replaced by its dilated extent d*(k-1)+1 per axis: what the output
    size and the ``same`` pads see (the rule of shapes.window_out and shapes.conv_pads)."""
    (kh, kw), (dh, dw) = opts["kernel"], opts.get("dilation", (1, 1))
    return {**opts, "kernel": (dh * (kh - 1) + 1, dw * (kw - 1) + 1)}


def _conv_shape(opts: Opts, ins: list[Shape]) -> Shape:
    """window_out over the dilated kernel; ``groups`` must divide the input channels and the filters."""
    need_image("conv2d", ins[0])
    g, c, f = opts.get("groups", 1), ins[0][0], opts["filters"]
    if c % g or f % g:
        raise ShapeError(f"conv2d groups={g} must divide the input channels ({c}) and the filters ({f})",
                         hint=f"pick groups among the common divisors of {c} and {f} (groups={c} with "
                              f"filters={c} is a depthwise convolution)", option="groups")
    try:
        return window_out("conv2d", dilated(opts), ins[0], f, pooling=False)
    except ShapeError as e:
        if tuple(opts.get("dilation", (1, 1))) == (1, 1) or e.option != "kernel":
            raise
        (kh, kw), (dh, dw), (eh, ew) = opts["kernel"], opts["dilation"], dilated(opts)["kernel"]
        raise ShapeError(f"conv2d kernel {kh}x{kw} with dilation {dh}x{dw} spans {eh}x{ew}, too large for its "
                         f"input {fmt_shape(ins[0])}", hint="use a smaller dilation or kernel, or padding=same",
                         option="dilation") from None


def _conv_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    """kernel (filters, in_channels/groups, kh, kw), bias (filters,); fans count the receptive field of one group."""
    kh, kw, f, g = *opts["kernel"], opts["filters"], opts.get("groups", 1)
    c = ins[0][0] // g
    return _kernel(name, opts, (f, c, kh, kw), c * kh * kw, f // g * kh * kw, f)


def _conv_flops(opts: Opts, ins: list[Shape], out: Shape) -> int:
    kh, kw = opts["kernel"]
    c = ins[0][0] // opts.get("groups", 1)
    return 2 * c * kh * kw * size(out) + (size(out) if opts.get("bias", True) else 0)


def _window_scratch(kind: str) -> ScratchRule:
    """(forward, backward) per-example elements of conv2d / maxpool / avgpool.

    conv2d: forward keeps the padded input, cols ``(P, C*kh*kw + 1)`` (P = output pixels)
    and its output; backward the padded input gradient and dx (dcols reuses cols).
    Pools: the padded input (or the window-major blocks, as large) and the output;
    backward the padded input gradient (plus dy for avgpool). Measured against the
    engine's scratch arrays (tests/test_hardening_frontend.py).
    """

    def rule(opts: Opts, ins: list[Shape], out_shape: Shape) -> tuple[int, int]:
        if len(ins[0]) != 3:
            return scratch_per_output(1.0, 1.0)(opts, ins, out_shape)
        (c, h, w), (kh, kw) = ins[0], opts["kernel"]
        top, left, bottom, right = conv_pads(dilated(opts) if kind == "conv2d" else opts, h, w)
        padded = c * (h + top + bottom) * (w + left + right)
        inp, out = size(ins[0]), size(out_shape)
        if kind == "conv2d":
            cols = (out // out_shape[0]) * (c * kh * kw + 1)
            return padded + cols + out, padded + inp
        if kind == "maxpool":
            return padded + out, padded
        return padded + out, padded + out

    return rule


def _pool(kind: str, doc: str, padding_doc: str) -> LayerKind:
    def default_stride(opts: dict[str, Any]) -> None:
        if opts.get("stride") is None:
            opts["stride"] = opts["kernel"]

    def pool_flops(opts: Opts, ins: list[Shape], out: Shape) -> int:
        kh, kw = opts["kernel"]
        return kh * kw * size(out)

    return LayerKind(
        kind, Schema(kind, (_WINDOW, _POOL_STRIDE, Opt("padding", Padding(), (0, 0), padding_doc), NAME),
                     positional=("kernel",), doc=doc, example=f"{kind} 2"),
        shape=lambda opts, ins: window_out(kind, opts, ins[0], None, pooling=True),
        flops=pool_flops, scratch=_window_scratch(kind), complete=default_stride)


def _global_pool_shape(kind: str) -> ShapeRule:
    """(C, H, W) -> (C,)."""

    def rule(opts: Opts, ins: list[Shape]) -> Shape:
        need_image(kind, ins[0])
        return (ins[0][0],)

    return rule


def _layernorm_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    """gamma, beta: (F,) for vectors, (C,) for images (one scale and shift per channel, as batchnorm)."""
    c = (channels(ins[0]),)
    return ParamSpec(f"{name}.gamma", c, "ones"), ParamSpec(f"{name}.beta", c, "zeros")


def _batchnorm_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    """gamma, beta (trainable), running_mean, running_var (not): each (C,) or (F,)."""
    c = (channels(ins[0]),)
    return (ParamSpec(f"{name}.gamma", c, "ones"), ParamSpec(f"{name}.beta", c, "zeros"),
            ParamSpec(f"{name}.running_mean", c, "zeros", trainable=False),
            ParamSpec(f"{name}.running_var", c, "ones", trainable=False))


def _alpha_params(name: str, opts: Opts, ins: list[Shape], out: Shape) -> tuple[ParamSpec, ...]:
    """A learned alpha (learn=true): (1,) per layer, (C,) or (F,) per channel, starting at ``alpha``."""
    if not opts.get("learn"):
        return ()
    c = (1,) if opts["per"] == "layer" else (channels(ins[0]),)
    return (ParamSpec(f"{name}.alpha", c, "const", value=float(opts["alpha"])),)


def _dropout_shape(opts: Opts, ins: list[Shape]) -> Shape:
    """Same shape; ``channels=true`` needs an image (feature maps to drop)."""
    if opts.get("channels") and len(ins[0]) != 3:
        raise ShapeError(f"dropout channels=true drops whole feature maps, but the input here has shape "
                         f"{fmt_shape(ins[0])}", hint="write channels=true only after a conv2d or pool layer; "
                         "plain dropout drops single features", option="channels")
    return ins[0]


def _softmax_shape(opts: Opts, ins: list[Shape]) -> Shape:
    if len(ins[0]) != 1:
        raise ShapeError(f"softmax needs a vector input, but the input here has shape {fmt_shape(ins[0])}",
                         hint="add 'flatten' and a dense layer before softmax")
    return ins[0]


def _learn_options(alpha: Opt, learn_doc: str, per_what: str) -> tuple[Opt, ...]:
    """``alpha`` and the options of a learned alpha (leaky_relu, elu)."""
    return (alpha, Opt("learn", Bool(), False, learn_doc),
            Opt("per", Choice(("layer", "channel")), "layer",
                f"one learned {per_what} for the layer, or one per channel/feature"))


# --- the built-in kinds, in the order the docs list them ---------------------------------------

register(LayerKind(
    "dense", Schema("dense", (Opt("units", Int(1, MAX_WIDTH)), *INIT_OPTIONS,
                              Opt("bias", Bool(), True, "add a learned bias"), NAME),
                    positional=("units",), doc="fully connected layer y = x W + b; W is (in, units)",
                    example="dense 256 init=he_normal"),
    shape=_dense_shape, params=_dense_params, flops=_dense_flops, scratch=_dense_scratch, role=WEIGHTED))
register(LayerKind(
    "conv2d", Schema("conv2d", (Opt("filters", Int(1, MAX_WIDTH)),
                                Opt("kernel", Pair(1, MAX_WINDOW), (3, 3), "kernel size k or [kh, kw]"),
                                Opt("stride", Pair(1, MAX_WINDOW), (1, 1), "stride s or [sh, sw]"),
                                Opt("padding", Padding(), "valid", "same, valid, or pixels per side"),
                                Opt("dilation", Pair(1, MAX_WINDOW), (1, 1),
                                    "spacing of the kernel taps d or [dh, dw]: a k-tap kernel spans d*(k-1)+1"),
                                Opt("groups", Int(1, MAX_WIDTH), 1,
                                    "split channels and filters into this many independent groups; "
                                    "groups = input channels = filters: depthwise"),
                                *INIT_OPTIONS, Opt("bias", Bool(), True, "add a learned bias per filter"), NAME),
                     positional=("filters",),
                     doc="2-D convolution, NCHW; kernel is (filters, in_channels/groups, kh, kw)",
                     example="conv2d 32 kernel=3 padding=same"),
    shape=_conv_shape, params=_conv_params, flops=_conv_flops, scratch=_window_scratch("conv2d"), role=WEIGHTED,
    prefix="conv"))
register(_pool("maxpool", "max pooling", "pixels of padding per side (acting as -inf), or same (output "
                                        "ceil(H/stride)) or valid"))
register(_pool("avgpool", "average pooling", "pixels of zero padding per side (not counted), or same (output "
                                        "ceil(H/stride)) or valid"))
register(LayerKind(
    "global_avgpool", Schema("global_avgpool", (NAME,), doc="mean over height and width: (C, H, W) -> (C,)",
                             example="global_avgpool"),
    shape=_global_pool_shape("global_avgpool"), flops=lambda opts, ins, out: size(ins[0]),
    scratch=lambda opts, ins, out: (size(out), size(ins[0])), prefix="gap"))
register(LayerKind(
    "global_maxpool", Schema("global_maxpool", (NAME,), doc="max over height and width: (C, H, W) -> (C,)",
                             example="global_maxpool"),
    shape=_global_pool_shape("global_maxpool"), flops=lambda opts, ins, out: size(ins[0]),
    scratch=lambda opts, ins, out: (size(out), size(ins[0])), prefix="gmp"))
register(LayerKind(
    "flatten", Schema("flatten", (NAME,), doc="(C, H, W) -> (C*H*W,)", example="flatten"),
    shape=lambda opts, ins: (size(ins[0]),), flops=per_output(0), scratch=scratch_per_output(0.0, 0.0)))
register(LayerKind(
    "batchnorm", Schema("batchnorm", (Opt("momentum", Float(0.0, 1.0, hi_open=True), 0.99,
                                          "running = momentum*running + (1-momentum)*batch"),
                                      Opt("eps", Float(1e-10, 1.0), 1e-5, "added to the variance"), NAME),
                        doc="batch normalisation per feature (dense) or per channel (conv)",
                        example="batchnorm momentum=0.99"),
    params=_batchnorm_params, flops=per_output(2), scratch=scratch_per_output(2.0, 2.0), prefix="bn"))
register(LayerKind(
    "layernorm", Schema("layernorm", (Opt("eps", Float(1e-10, 1.0), 1e-5, "added to the variance"), NAME),
                        doc="layer normalisation per example, over the features (dense) or over C, H and W "
                            "(conv); learned gamma and beta per feature or channel",
                        example="layernorm"),
    params=_layernorm_params, flops=per_output(5), scratch=scratch_per_output(2.0, 2.0), prefix="ln"))
register(LayerKind(
    "dropout", Schema("dropout", (Opt("rate", Float(0.0, 1.0, hi_open=True)),
                                  Opt("mode", Choice(("inverted", "scale")), "inverted",
                                      "inverted: divide by keep prob while training; scale: multiply by keep prob "
                                      "at evaluation (the lecture's weight scaling)"),
                                  Opt("channels", Bool(), False,
                                      "on images, drop whole feature maps (one draw per example and channel)"),
                                  NAME),
                      positional=("rate",), doc="drop units (or, channels=true, whole feature maps) with "
                      "probability rate while training", example="dropout 0.3"),
    shape=_dropout_shape, flops=per_output(0), scratch=scratch_per_output(2.25, 1.0)))
register(activation("relu", "max(0, x)", init_before="he_normal", scratch=(1.0, 1.25)))
_LEAKY_ALPHA = Opt("alpha", Float(0.0, 10.0), 0.01, "slope for x < 0 (initial value if learned)")
_ELU_ALPHA = Opt("alpha", Float(0.0, 10.0, lo_open=True), 1.0, "scale of the negative part")
register(activation("leaky_relu", "x if x >= 0 else alpha*x", init_before="he_normal", scratch=(3.25, 2.0),
                    options=_learn_options(_LEAKY_ALPHA, "learn the slope (PReLU)", "slope"),
                    example="leaky_relu alpha=0.1 learn=true per=channel", params=_alpha_params))
register(activation("elu", "x if x >= 0 else alpha*(exp(x)-1)", init_before="he_normal", flops=4,
                    scratch=(3.25, 2.0), options=_learn_options(_ELU_ALPHA, "learn alpha", "alpha"),
                    example="elu alpha=1.0", params=_alpha_params))
#: SELU's fixed constants (Klambauer et al. 2017), shared by the engine op and the ONNX converter.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
register(activation("gelu", "x * Phi(x) = x/2 * (1 + erf(x/sqrt(2))), the exact form", init_before="he_normal",
                    flops=8, scratch=(2.0, 2.0)))
register(activation("silu", "x * sigmoid(x) (swish)", init_before="he_normal", flops=5, scratch=(2.0, 2.0)))
register(activation("selu", "lambda * (x if x >= 0 else alpha*(exp(x)-1)), lambda = 1.0507..., alpha = 1.6732...; "
                    "self-normalising with lecun_normal", init_before="lecun_normal", flops=4, scratch=(2.0, 2.0)))
register(activation("softplus", "log(1 + exp(x))", init_before="he_normal", flops=4, scratch=(2.0, 2.0)))
register(activation("sigmoid", "1 / (1 + exp(-x))", init_before="xavier_normal", flops=4,
                    head="binary_cross_entropy"))
register(activation("tanh", "tanh(x)", init_before="xavier_normal", flops=4))
register(activation("softmax", "exp(x_i) / sum_j exp(x_j); last layer, before cross_entropy",
                    init_before="xavier_normal", flops=4, shape=_softmax_shape, head="cross_entropy",
                    last_only=True))



# --- kinds that join several inputs (graphs: residual blocks, branches) -------------------------


def _add_shape(opts: Opts, ins: list[Shape]) -> Shape:
    """y = x_1 + ... + x_k: every input has the first one's shape, and so has y."""
    for j in range(1, len(ins)):
        if ins[j] != ins[0]:
            raise InputMismatch("add", "inputs of one shape", ins, 0, j,
                                "add sums elementwise: bring one input to the other's shape (conv2d with "
                                "kernel=1 and the filters and stride that fit, or dense on vectors)")
    return ins[0]


def _concat_shape(opts: Opts, ins: list[Shape]) -> Shape:
    """Joined along the channels (C_1 + ... + C_k, H, W) or the features (F_1 + ... + F_k,)."""
    for j in range(1, len(ins)):
        if len(ins[j]) != len(ins[0]):
            raise InputMismatch("concat", "inputs of one kind (all images or all vectors)", ins, 0, j,
                                "flatten (or global_avgpool) the images before joining them with vectors")
        if ins[j][1:] != ins[0][1:]:
            raise InputMismatch("concat", "images of one height and width", ins, 0, j,
                                "concat joins channels: give the branches the same strides (padding=same keeps "
                                "the size), or pool one of them")
    return (sum(s[0] for s in ins), *ins[0][1:])


register(LayerKind(
    "add", Schema("add", (NAME,), doc="sum of two or more earlier layers' outputs of one shape, named as values "
                  "(residual blocks write it for you)", example="add conv2, relu1"),
    shape=_add_shape, flops=lambda opts, ins, out: (len(ins) - 1) * size(out),
    scratch=lambda opts, ins, out: (size(out), 0), inputs=MANY))
register(LayerKind(
    "concat", Schema("concat", (NAME,), doc="two or more earlier layers' outputs joined along the channels "
                     "(images of one height and width) or the features (vectors), named as values",
                     example="concat branch1, branch2"),
    shape=_concat_shape, flops=per_output(0), scratch=scratch_per_output(1.0, 1.0), inputs=MANY))

__all__ = ["ACTIVATION", "INITS", "INIT_OPTIONS", "INIT_OPTION_USERS", "KINDS", "LAYERS", "MANY", "NAME", "OTHER",
           "SELU_ALPHA", "SELU_LAMBDA", "WEIGHTED",
           "InputMismatch", "LayerKind", "ParamSpec", "activation", "activations", "head_for",
           "is_weighted", "no_params", "per_output", "prefix_of", "register", "same_shape", "scratch_per_output",
           "takes_many", "unregister"]
