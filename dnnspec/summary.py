"""What ``dnnspec check`` prints: a Keras-like summary, and the spec rendered back.

``summary(model)`` is a table (name, kind, output shape, parameters, init) with totals,
FLOPs and the training recipe; a graph's table has an ``input`` column too, filled where
a layer reads something else than the line above. ``render(model)`` writes the spec with
every default filled in, blocks expanded (``repeat`` copied, ``residual`` as its layers
and an ``add``, ``from=`` where a layer reads another than the line above); parsing its
output gives the same IR (the round-trip tests check this).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from . import ir, memory, registry
from .registry import INIT_OPTION_USERS, LAYERS
from .schema import (
    AUGMENT,
    LOSS,
    OPTIMIZER,
    SCHEDULE,
    STATEMENTS,
    Angle,
    Bool,
    FloatList,
    FloatRange,
    Length,
    Padding,
    Pair,
    Schema,
)

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*")


def _num(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def _plain(v: float) -> str:
    """A number without exponent, for quantities like 2px (the grammar has no 1e-3px)."""
    s = format(Decimal(repr(float(v))), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def _text(v: str) -> str:
    """A name bare when the grammar reads it back as the same string, else quoted."""
    return v if _BARE.fullmatch(v) and v not in ("true", "false") else _quote(v)


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _pair(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"[{v[0]}, {v[1]}]"


def format_value(typ: Any, v: Any) -> str:
    """A bound option value written back in .dnn syntax."""
    if isinstance(typ, Bool):
        return "true" if v else "false"
    if isinstance(typ, Padding):
        return v if isinstance(v, str) else _pair(v)
    if isinstance(typ, Pair):
        return _pair(v)
    if isinstance(typ, FloatRange):
        return f"{_num(v[0])}..{_num(v[1])}"
    if isinstance(typ, Length):
        return f"{_plain(v[0])}px" if v[1] == "px" else _num(v[0])
    if isinstance(typ, Angle):
        return f"{_plain(v)}deg"
    if isinstance(typ, FloatList):
        return _num(v[0]) if len(v) == 1 else "[" + ", ".join(_num(x) for x in v) + "]"
    if isinstance(v, str):
        return _text(v)
    return _num(v)


def _options(schema: Schema, values: Any, skip: tuple[str, ...] = ()) -> str:
    """``opt=value`` for every option with a value, positional ones first without a name."""
    parts = []
    for o in schema.options:
        v = values.get(o.name)
        if o.name in skip or v is None:
            continue
        text = format_value(o.type, v)
        parts.append(text if o.name in schema.positional else f"{o.name}={text}")
    return " ".join(parts)


def _stmt(head: str, rest: str) -> str:
    return f"{head} {rest}".rstrip()


# --- render ------------------------------------------------------------------------


def render(model: ir.Model) -> str:
    """The spec written back with every default filled in and repeat blocks expanded."""
    out = [f"network {_text(model.name)}"]
    if model.data is not None:
        from .frontend import DATA_SOURCES

        bare = model.data in DATA_SOURCES
        out.append(f"data {model.data}" if bare else f"data {_quote(model.data)}")
    out.append(_render_input(model.input))
    out.append(_render_normalize(model.normalize))
    out.append(_render_task(model.task))
    if model.augment:
        out.append("augment {")
        out += [f"  {_stmt(s.kind, _options(AUGMENT[s.kind], s.options))}" for s in model.augment]
        out.append("}")
    out.append("layers {")
    out += [f"  {_render_layer(layer, prev)}" for layer, prev in zip(model.layers, (ir.INPUT, *model.layer_names))]
    out.append("}")
    out.append(_stmt("loss", _stmt(model.loss.kind, _options(LOSS[model.loss.kind], model.loss.options))))
    for head, table, step in (("optimizer", OPTIMIZER, model.optimizer), ("schedule", SCHEDULE, model.schedule)):
        out.append(_stmt(head, _stmt(step.kind, _options(table[step.kind], step.options))))
    out.append(_stmt("train", _options(STATEMENTS["train"], model.train)))
    return "\n".join(out) + "\n"


def _render_layer(layer: ir.Layer, prev: str) -> str:
    """One layer statement: ``add a, b name=add1``, or its options and ``from=`` when it does not read ``prev``."""
    opts = _options(LAYERS[layer.kind], layer.options, _unused(layer))
    if registry.takes_many(layer.kind):
        return _stmt(layer.kind, ", ".join(_text(n) for n in layer.inputs) + " " + opts)
    if layer.inputs != (prev,):
        opts += f" from={_text(layer.inputs[0])}"
    return _stmt(layer.kind, opts)


def _unused(layer: ir.Layer) -> tuple[str, ...]:
    """The init options this layer's init does not read (std, limit, fan): not rendered, as the
    front end refuses them written there; parsing back gives their defaults, as in the IR."""
    init = layer.options.get("init")
    return tuple(opt for opt, (users, _) in INIT_OPTION_USERS.items() if init not in users)


def _render_input(inp: ir.Input) -> str:
    shape = "[" + ", ".join(str(d) for d in inp.shape) + "]"
    kind = "image" if inp.kind == "image" else ""
    return f"input {kind}{shape} scale={_num(inp.scale)}"


def _render_normalize(n: ir.Normalize) -> str:
    if n.mode != "values":
        return f"normalize {n.mode}"
    fl = FloatList()
    return f"normalize mean={format_value(fl, n.mean)} std={format_value(fl, n.std)}"


def _render_task(t: ir.Task) -> str:
    if t.kind == "regression":
        return f"targets {t.targets}"
    if t.class_names:
        return "classes " + ", ".join(_quote(c) for c in t.class_names)
    return f"classes {t.classes}"


# --- summary -----------------------------------------------------------------------


def _shape(s: tuple[int, ...]) -> str:
    return f"({s[0]},)" if len(s) == 1 else "(" + ", ".join(str(d) for d in s) + ")"


def _init_cell(layer: ir.Layer) -> str:
    if not registry.is_weighted(layer.kind):
        return ""
    o = layer.options
    cell = f"{o['init']} fan={o['fan']}"
    if o["init"] == "normal":
        cell = f"normal std={o['std']:g}"
    elif o["init"] == "uniform":
        cell = f"uniform limit={o['limit']:g}"
    elif o["init"] == "zeros":
        cell = "zeros"
    return cell + ("" if "init" in layer.explicit else " (default)")


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    return lines


def _layer_rows(model: ir.Model) -> tuple[list[list[str]], set[int]]:
    """The table's rows and its right-aligned columns. A graph gets an ``input`` column, filled where a
    layer reads something else than the line above (``bn4, relu1`` for an add)."""
    graph = not model.is_chain
    head = ["layer", "kind", *(["input"] if graph else []), "output shape", "params", "init"]
    rows = [head, ["input", model.input.kind, *([""] if graph else []), _shape(model.input.shape), "0", ""]]
    for layer, prev in zip(model.layers, (ir.INPUT, *model.layer_names)):
        n = sum(p.size for p in layer.params)
        reads = [", ".join(layer.inputs) if layer.inputs != (prev,) else ""] if graph else []
        rows.append([layer.name, layer.kind, *reads, _shape(layer.out_shape), f"{n:,}", _init_cell(layer)])
    return rows, {head.index("params")}


def _step_line(step: ir.Step, table: dict[str, Schema]) -> str:
    return _stmt(step.kind, _options(table[step.kind], step.options))


def summary(model: ir.Model) -> str:
    """A Keras-like table of the layers, parameter totals, FLOPs and the training recipe."""
    rows, right = _layer_rows(model)
    trainable = sum(p.size for p in model.params if p.trainable)
    frozen = sum(p.size for p in model.params if not p.trainable)
    flops = sum(layer.flops for layer in model.layers)
    mem = memory.estimate(model)
    lines = [f"network {model.name}  ({model.path})", *_table(rows, right), "",
             f"trainable params:      {trainable:,}",
             f"non-trainable params:  {frozen:,}",
             f"forward FLOPs/example: {flops:,}",
             f"training memory:       about {memory.fmt_bytes(mem.total)} at batch {mem.batch} (parameters and "
             f"optimizer {memory.fmt_bytes(mem.params)}, activations {memory.fmt_bytes(mem.activations)})", ""]
    lines += _recipe(model)
    return "\n".join(lines) + "\n"


def _recipe(model: ir.Model) -> list[str]:
    t, task = model.train, model.task
    if ir.task_of(task.kind, model.loss.kind) == "multilabel":  # targets N with sigmoid
        what = f"multi-label classification, {task.targets} label{'s' * (task.targets != 1)} (a yes/no each)"
    elif task.kind == "regression":
        what = f"regression, {task.targets} target(s)"
    else:
        names = f": {', '.join(task.class_names)}" if task.class_names else ""
        what = f"classification, {task.classes} classes{names}"
    norm = model.normalize.mode
    if norm == "values":
        norm = f"mean={list(model.normalize.mean)} std={list(model.normalize.std)}"
    aug = ", ".join(_step_line(s, AUGMENT) for s in model.augment) or "none"
    return [
        f"data:      {model.data or '(none; pass --data)'}",
        f"input:     {model.input.kind} {_shape(model.input.shape)} scale={model.input.scale:g} normalize={norm}",
        f"task:      {what}",
        f"loss:      {_step_line(model.loss, LOSS)}",
        f"optimizer: {_step_line(model.optimizer, OPTIMIZER)}",
        f"schedule:  {_step_line(model.schedule, SCHEDULE)}",
        f"train:     {_options(STATEMENTS['train'], t)}",
        f"augment:   {aug}",
    ]


# --- documentation -------------------------------------------------------------------


def _doc_default(o: Any) -> str:
    from .schema import REQUIRED

    if o.default is REQUIRED:
        return "required"
    if o.default is None:
        return "—"
    return f"`{format_value(o.type, o.default)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def option_tables() -> str:
    """Markdown tables of every statement, layer, op and option, generated from dnnspec.schema and
    the layer kinds of dnnspec.registry.

    docs/language.md embeds this text between markers; a test keeps the two identical.
    """
    groups = (("Statements with options", STATEMENTS), ("Layers", LAYERS), ("Augmentation ops", AUGMENT),
              ("Optimizers", OPTIMIZER), ("Schedules", SCHEDULE), ("Losses", LOSS))
    out = []
    for title, table in groups:
        out.append(f"### {title}\n")
        for schema in table.values():
            pos = f" (positional: {', '.join(schema.positional)})" if schema.positional else ""
            out.append(f"#### `{schema.name}`{pos}\n\n{schema.doc}. Example: `{schema.example}`\n")
            if schema.options:
                out.append("| option | type / range | default | meaning |\n|---|---|---|---|")
                out += [f"| `{o.name}` | {_cell(o.type.describe())} | {_cell(_doc_default(o))} | {_cell(o.doc)} |"
                        for o in schema.options]
                out.append("")
    return "\n".join(out).replace(" |  |", " | |")
