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

Graphs: every layer names its inputs (``Layer.inputs``: the producing layers' names,
``"input"`` for the model's input; a chain's layer reads the line above), and
``Model.layers`` is in topological order (every input is produced earlier), ending with
the network's output. ``add`` and ``concat`` read two or more inputs; every other kind
one. A Layer or Model built without ``inputs`` is a chain: :class:`Model` links each
such layer to the one before it.

:func:`build_layers` is the one place that names layers, infers shapes, resolves the
default init and lists parameters, each by the rules of the layer's kind in
:mod:`dnnspec.registry`; the front end calls it, and tests may call it directly to make
an IR without text. :class:`ParamSpec` is defined beside those rules (the registry) and
is the same class here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from . import registry
from .errors import NO_SPAN, ShapeError, Span
from .registry import ParamSpec
from .schema import OPTIMIZER, SCHEDULE, STATEMENTS

FORMAT_VERSION = 1
#: The name by which layers read the model's input (``from=input``); no layer may take it.
INPUT = "input"


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
class Layer:
    """One layer: kind (a key of dnnspec.registry.KINDS), options with defaults filled, shapes, params.

    ``inputs``: the names of the layers it reads (``"input"`` for the model's input), one
    for every kind but ``add``/``concat``; empty in a Layer made by hand, which
    :class:`Model` links to the layer before it. ``in_shapes``: their shapes, in order;
    ``in_shape`` is the first (the only one of a one-input kind).
    """

    name: str
    kind: str
    options: FrozenDict
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: tuple[ParamSpec, ...] = ()
    span: Span = NO_SPAN
    explicit: frozenset[str] = frozenset()
    flops: int = 0
    inputs: tuple[str, ...] = ()
    in_shapes: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.in_shapes:
            object.__setattr__(self, "in_shapes", (tuple(self.in_shape),))

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


def task_of(kind: str, loss: str) -> str:
    """The task a report and a summary speak of: the spec's (classification, regression), or
    multilabel for targets with binary_cross_entropy (one sigmoid yes/no per output)."""
    return "multilabel" if kind == "regression" and loss == "binary_cross_entropy" else kind


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

    def __post_init__(self) -> None:
        if any(not layer.inputs for layer in self.layers):  # made by hand, or read from an older file
            object.__setattr__(self, "layers", _linked(self.layers))

    @property
    def is_chain(self) -> bool:
        """True when every layer reads the one before it (the first: the input), as every spec without
        ``from=``, ``residual``, ``add`` or ``concat``."""
        return all(layer.inputs == (prev,) for layer, prev in zip(self.layers, (INPUT, *self.layer_names)))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        """Name -> the layers that read its output, in order (``"input"`` included; the last layer reads none).
        A layer reading one output twice (``add a, a``) is listed twice."""
        readers: dict[str, list[str]] = {INPUT: [], **{layer.name: [] for layer in self.layers}}
        for layer in self.layers:
            for name in layer.inputs:
                readers.setdefault(name, []).append(layer.name)
        return {name: tuple(r) for name, r in readers.items()}

    @property
    def params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for layer in self.layers for p in layer.params)

    @property
    def arrays(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every array a network of this model holds (``Net.params``, checkpoints, export):
        each parameter, then ``input.mean`` and ``input.std`` ((C,) or (F,)) when the input is normalised."""
        shapes = {p.name: p.shape for p in self.params}
        if self.normalize.mode != "none":
            shapes.update({"input.mean": self.input.shape[:1], "input.std": self.input.shape[:1]})
        return shapes

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


def _linked(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """``layers`` with every layer that names no inputs reading the one before it (the first: the input)."""
    out, prev = [], INPUT
    for layer in layers:
        if not layer.inputs:
            layer = replace(layer, inputs=(prev,))
        out.append(layer)
        prev = layer.name
    return tuple(out)


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
    """A layer as written, options already bound by schema.LAYERS[kind].bind.

    ``inputs``: the names of the layers it reads (``"input"``: the model's input), resolved
    by the front end; empty: the layer before it. ``input_spans``: where each was written
    (for messages). ``block``: ``"residual"`` for the ``add`` that closes a residual block.
    """

    kind: str
    options: dict[str, Any]
    explicit: set[str] = field(default_factory=set)
    span: Span = NO_SPAN
    option_spans: dict[str, Span] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    input_spans: tuple[Span, ...] = ()
    block: str = ""


def inputs_of(decls: list[LayerDecl], names: list[str], i: int) -> tuple[str, ...]:
    """The names ``decls[i]`` reads: its own ``inputs``, else the layer before it (the first: ``"input"``)."""
    return decls[i].inputs or ((names[i - 1] if i else INPUT),)


def first_consumers(decls: list[LayerDecl], names: list[str]) -> list[int | None]:
    """For each layer, the index of the first later layer that reads its output (None: no layer does)."""
    index = {name: i for i, name in enumerate(names)}
    first: list[int | None] = [None] * len(decls)
    for j in range(len(decls)):
        for name in inputs_of(decls, names, j):
            i = index.get(name)
            if i is not None and i < j and first[i] is None:
                first[i] = j
    return first


def default_init(decls: list[LayerDecl], i: int, consumer: list[int | None] | None = None) -> str:
    """The init a weighted layer gets when none is written: look at the next activation.

    The next activation's ``init_before`` (He (normal) before the ReLU family, Xavier
    (normal) before sigmoid/tanh/softmax), looking through the layers of role ``other``
    (batch norm, pools, ``add``, ...); Xavier when a weighted layer or the end comes first
    (a linear output). "Next" follows the layer's output: ``consumer[i]`` is the first
    layer that reads it (:func:`first_consumers`); without it, the next line (a chain).
    """
    j = consumer[i] if consumer is not None else (i + 1 if i + 1 < len(decls) else None)
    while j is not None:
        kind = registry.KINDS.get(decls[j].kind)
        if kind is None or kind.role == registry.WEIGHTED:
            break
        if kind.init_before:
            return kind.init_before
        j = consumer[j] if consumer is not None else (j + 1 if j + 1 < len(decls) else None)
    return "xavier_normal"


def default_fan(init: str) -> str:
    return "in" if init.startswith("lecun") else "avg"


def default_names(decls: list[LayerDecl]) -> list[str]:
    """``<prefix><n>`` per kind prefix (registry), counting from 1, for layers without ``name=``."""
    counts: dict[str, int] = {}
    names = []
    for d in decls:
        prefix = registry.prefix_of(d.kind)
        counts[prefix] = counts.get(prefix, 0) + 1
        names.append(d.options.get("name") or f"{prefix}{counts[prefix]}")
    return names


def _complete(decls: list[LayerDecl], i: int, kind: registry.LayerKind, name: str,
              consumer: list[int | None]) -> dict[str, Any]:
    """The options of ``decls[i]`` with its name, its resolved init and fan, and its kind's derived options."""
    opts = dict(decls[i].options)
    opts["name"] = name
    if kind.role == registry.WEIGHTED:
        if opts.get("init", "auto") == "auto":
            opts["init"] = default_init(decls, i, consumer)
        if opts.get("fan", "auto") == "auto":
            opts["fan"] = default_fan(opts["init"])
    if kind.complete is not None:
        kind.complete(opts)
    return opts


def build_layers(
    in_shape: tuple[int, ...], decls: list[LayerDecl], on_error: Any = None
) -> tuple[Layer, ...]:
    """Name layers, link them to their inputs, infer shapes, resolve inits, list parameters and FLOPs
    (the kinds' registry rules). ``decls`` are in topological order: every input is produced earlier.

    ``on_error(decl, ShapeError)`` is called for each shape error (the front end turns
    it into a Diagnostic) and the walk goes on with the (first) input shape passed
    through; without ``on_error`` the first ShapeError is raised. An input name that no
    earlier layer has is a ValueError (the front end reports those before).
    """
    names = default_names(decls)
    consumer = first_consumers(decls, names)
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(in_shape)}
    layers = []
    for i, (d, name) in enumerate(zip(decls, names)):
        kind = registry.KINDS[d.kind]
        opts = _complete(decls, i, kind, name, consumer)
        inputs = inputs_of(decls, names, i)
        missing = [n for n in inputs if n not in shapes]
        if missing:
            raise ValueError(f"layer {name} reads {missing[0]!r}, which no earlier layer is")
        ins = [shapes[n] for n in inputs]
        try:
            out = tuple(kind.shape(opts, ins))
            params, flops = tuple(kind.params(name, opts, ins, out)), int(kind.flops(opts, ins, out))
        except ShapeError as e:
            if isinstance(e, registry.InputMismatch):
                e.named(inputs)
            if on_error is None:
                raise
            on_error(d, e)
            out, params, flops = ins[0], (), 0
        layers.append(Layer(name, d.kind, FrozenDict(opts), ins[0], out, params, d.span, frozenset(d.explicit),
                            flops, tuple(inputs), tuple(ins)))
        shapes[name] = out
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

    Options not given take their schema defaults. Graphs: ``"from": NAME`` reads another
    layer than the one before (``"input"``: the model's input), ``("add", {"inputs": [NAME,
    NAME]})`` joins named layers; names are ``name=`` or the defaults (``dense1``).
    """
    decls = []
    for kind, opts in layers:
        opts = dict(opts)
        inputs = opts.pop("inputs", None) or ([opts.pop("from")] if "from" in opts else [])
        values, explicit = registry.LAYERS[kind].bind([], opts)
        decls.append(LayerDecl(kind, values, explicit, inputs=tuple(inputs)))
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
    "FORMAT_VERSION", "INPUT", "FrozenDict", "Input", "Layer", "LayerDecl", "Model", "Normalize",
    "ParamSpec", "Step", "Task", "asdict", "build_layers", "default_names", "first_consumers", "inputs_of",
    "model_from_layers", "task_of",
]
