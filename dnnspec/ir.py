"""The intermediate representation (IR): what a checked ``.dnn`` file means.

Frozen dataclasses, the single input of the engine and the exporter: neither re-reads
text. Every node carries its source :class:`~dnnspec.errors.Span`. Shapes are per
example (no batch axis): ``(784,)`` for vectors, ``(C, H, W)`` for images (NCHW).

Every layer has a stable name (user-given, or ``<prefix><n>`` such as ``dense1``,
``conv2``, ``bn1``) and every parameter is named ``<layer>.<param>``
(``dense1.kernel``, ``bn1.gamma``, ``bn1.running_mean``): those names key the
checkpoints, ``Net.params`` and the ONNX initializers.

Parameter layouts (fixed, the engine and the exporter rely on them):

=========== ============================ ======================================
kind        parameter                    shape
=========== ============================ ======================================
dense       kernel, bias                 (in, units), (units,)
conv2d      kernel, bias                 (filters, in_channels, kh, kw), (filters,)
batchnorm   gamma, beta (trainable)      (C,) or (F,)
            running_mean, running_var    (C,) or (F,), trainable=False
leaky_relu  alpha (learn=true)           (1,) per=layer, (C,) or (F,) per=channel
elu         alpha (learn=true)           as leaky_relu
=========== ============================ ======================================

:func:`build_layers` is the one place that names layers, infers shapes, resolves the
default init and lists parameters; the front end calls it, and tests may call it
directly to make an IR without text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from .errors import NO_SPAN, Span
from .schema import NAME_PREFIX

FORMAT_VERSION = 1


class FrozenDict(Mapping):
    """An immutable, hashable mapping for option values."""

    __slots__ = ("_d", "_h")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._d = dict(*args, **kwargs)
        self._h: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(tuple(sorted((k, _hashable(v)) for k, v in self._d.items())))
        return self._h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._d) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenDict({self._d!r})"


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class ParamSpec:
    """One parameter array of a layer: its full name, shape, init and fans.

    ``init`` is one of schema.INITS without ``auto`` (plus ``ones`` and ``zeros`` for
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
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Layer:
    """One layer: kind (a key of schema.LAYERS), options with defaults filled, shapes, params."""

    name: str
    kind: str
    options: FrozenDict
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: tuple[ParamSpec, ...] = ()
    span: Span = NO_SPAN
    explicit: frozenset[str] = frozenset()
    flops: int = 0

    def param(self, local: str) -> ParamSpec:
        """The ParamSpec named ``<layer>.<local>``."""
        for p in self.params:
            if p.name == f"{self.name}.{local}":
                return p
        raise KeyError(f"{self.name} has no parameter {local!r}")


@dataclass(frozen=True)
class Input:
    """``input [784]`` (kind vector) or ``input image[1, 28, 28]`` (kind image)."""

    kind: str
    shape: tuple[int, ...]
    scale: float = 1.0
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Normalize:
    """Input normalisation, applied after ``scale``: ``(x*scale - mean) / std``.

    mode ``none``; ``auto`` (mean/std measured on the training split at train time,
    per channel for images, per feature for vectors, std below 1e-8 replaced by 1);
    ``values`` (``mean``/``std`` given, one value or one per channel/feature).
    """

    mode: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Task:
    """What the network predicts.

    kind ``classification`` (``classes N`` or class names), or ``regression``
    (``targets N``). ``outputs`` is the width the last layer must have: classes for
    cross_entropy, 1 for binary_cross_entropy with 2 classes, targets for mse.
    """

    kind: str
    classes: int = 0
    class_names: tuple[str, ...] = ()
    targets: int = 0
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Step:
    """A statement with a kind and bound options: a loss, optimizer, schedule or augment op."""

    kind: str
    options: FrozenDict = field(default_factory=FrozenDict)
    span: Span = NO_SPAN
    explicit: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Model:
    """A whole checked spec. ``layers`` ends with the output activation, if any."""

    name: str
    input: Input
    layers: tuple[Layer, ...]
    task: Task
    loss: Step
    optimizer: Step
    schedule: Step
    train: FrozenDict
    normalize: Normalize = Normalize()
    augment: tuple[Step, ...] = ()
    data: str | None = None
    data_span: Span = NO_SPAN
    source: str = ""
    path: str = "<string>"
    span: Span = NO_SPAN

    @property
    def params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for layer in self.layers for p in layer.params)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape if self.layers else self.input.shape

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self, indent: int | None = 2) -> str:
        """The IR as JSON (``dnnspec check --json``); the spec text is left out."""
        d = _jsonable(self)
        d.pop("source", None)
        return json.dumps(d, indent=indent)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Span):
        return f"{obj.file}:{obj.line}:{obj.col}"
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, frozenset, set)):
        items = sorted(obj) if isinstance(obj, (frozenset, set)) else obj
        return [_jsonable(v) for v in items]
    return obj


# --- building layers -------------------------------------------------------------


@dataclass
class LayerDecl:
    """A layer as written, options already bound by schema.LAYERS[kind].bind."""

    kind: str
    options: dict[str, Any]
    explicit: set[str] = field(default_factory=set)
    span: Span = NO_SPAN
    option_spans: dict[str, Span] = field(default_factory=dict)


WEIGHTED = ("dense", "conv2d")
RELU_FAMILY = ("relu", "leaky_relu", "elu", "softplus")
XAVIER_FAMILY = ("sigmoid", "tanh", "softmax")
TRANSPARENT = ("batchnorm", "dropout", "flatten", "maxpool", "avgpool", "global_avgpool")


def default_init(decls: list[LayerDecl], i: int) -> str:
    """The init a weighted layer gets when none is written: look at the next activation.

    He (normal) before the ReLU family, Xavier (normal) before sigmoid/tanh/softmax or
    when no activation follows (a linear output).
    """
    for d in decls[i + 1:]:
        if d.kind in RELU_FAMILY:
            return "he_normal"
        if d.kind in XAVIER_FAMILY:
            return "xavier_normal"
        if d.kind in WEIGHTED:
            break
    return "xavier_normal"


def default_fan(init: str) -> str:
    return "in" if init.startswith("lecun") else "avg"


def default_names(decls: list[LayerDecl]) -> list[str]:
    """``<prefix><n>`` per kind, counting from 1, for layers without ``name=``."""
    counts: dict[str, int] = {}
    names = []
    for d in decls:
        prefix = NAME_PREFIX.get(d.kind, d.kind)
        counts[prefix] = counts.get(prefix, 0) + 1
        names.append(d.options.get("name") or f"{prefix}{counts[prefix]}")
    return names


def build_layers(
    in_shape: tuple[int, ...], decls: list[LayerDecl], on_error: Any = None
) -> tuple[Layer, ...]:
    """Name layers, infer shapes, resolve inits, list parameters and FLOPs.

    ``on_error(decl, ShapeError)`` is called for each shape error (the front end turns
    it into a Diagnostic) and the walk goes on with the input shape passed through;
    without ``on_error`` the first ShapeError is raised.
    """
    from . import shapes
    from .errors import ShapeError

    names = default_names(decls)
    layers = []
    shape = tuple(in_shape)
    for i, (d, name) in enumerate(zip(decls, names)):
        opts = dict(d.options)
        opts["name"] = name
        if d.kind in WEIGHTED:
            if opts.get("init", "auto") == "auto":
                opts["init"] = default_init(decls, i)
            if opts.get("fan", "auto") == "auto":
                opts["fan"] = default_fan(opts["init"])
        if d.kind in ("maxpool", "avgpool") and opts.get("stride") is None:
            opts["stride"] = opts["kernel"]
        try:
            out = shapes.out_shape(d.kind, opts, shape)
        except ShapeError as e:
            if on_error is None:
                raise
            on_error(d, e)
            out = shape
            layers.append(Layer(name, d.kind, FrozenDict(opts), shape, out, (), d.span,
                                frozenset(d.explicit), 0))
            continue
        params = shapes.param_specs(d.kind, name, opts, shape, out)
        flops = shapes.flops(d.kind, opts, shape, out)
        layers.append(Layer(name, d.kind, FrozenDict(opts), shape, out, params, d.span,
                            frozenset(d.explicit), flops))
        shape = out
    return tuple(layers)


def model_from_layers(
    in_shape: tuple[int, ...],
    layers: list[tuple[str, dict[str, Any]]],
    *,
    loss: str = "cross_entropy",
    classes: int = 0,
    optimizer: str = "adam",
    optimizer_options: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    scale: float = 1.0,
) -> Model:
    """A Model built in code, for tests and the Python API: ``[("dense", {"units": 10}), ...]``.

    Options not given take their schema defaults.
    """
    from .schema import LAYERS, OPTIMIZER, SCHEDULE, STATEMENTS

    decls = []
    for kind, opts in layers:
        values, explicit = LAYERS[kind].bind([], dict(opts))
        decls.append(LayerDecl(kind, values, explicit))
    built = build_layers(tuple(in_shape), decls)
    out_width = built[-1].out_shape[-1] if built else in_shape[-1]
    if loss == "mse":
        task = Task("regression", targets=out_width)
    else:
        n = classes or (2 if loss == "binary_cross_entropy" else out_width)
        task = Task("classification", classes=n)
    opt_values, opt_explicit = OPTIMIZER[optimizer].bind([], dict(optimizer_options or {}))
    sched_values, _ = SCHEDULE["constant"].bind([], {})
    train_values, _ = STATEMENTS["train"].bind([], dict(train or {}))
    kind = "image" if len(in_shape) == 3 else "vector"
    return Model(
        name="model",
        input=Input(kind, tuple(in_shape), scale),
        layers=built,
        task=task,
        loss=Step(loss),
        optimizer=Step(optimizer, FrozenDict(opt_values), NO_SPAN, frozenset(opt_explicit)),
        schedule=Step("constant", FrozenDict(sched_values)),
        train=FrozenDict(train_values),
    )


__all__ = [
    "FORMAT_VERSION", "FrozenDict", "Input", "Layer", "LayerDecl", "Model", "Normalize",
    "ParamSpec", "Step", "Task", "asdict", "build_layers", "model_from_layers",
]
