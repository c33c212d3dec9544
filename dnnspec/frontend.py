"""AST -> checked IR: bind options against the schema, build layers, check the whole spec.

``parse(text, path)`` and ``load(path)`` return an :class:`ir.Model` or raise
:class:`SpecError` carrying every diagnostic of the file (or :class:`UsageError` for a
file that cannot be read). Options are bound one by one (``Schema.bind_one``) so that a
file with five mistakes gets five messages, each with a span and a hint (at most
``MAX_ERRORS``). A spec without errors is last checked against the machine's memory
(:mod:`dnnspec.memory`), so that what ``check`` accepts ``train`` can allocate.

Inside ``layers``, ``repeat`` and ``residual`` blocks are expanded into one list of
layers in topological order; what each layer reads (the line above, ``from=``, the names
of ``add``/``concat``, a block's input) is resolved by :mod:`dnnspec.wiring` once the
default names are known, and every layer but the last must feed a later one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

from . import ir, memory, registry, wiring
from .dataschema import SOURCE_OPTIONS, source_with
from .errors import NO_SPAN, Diagnostic, DiagnosticSink, ShapeError, Span, SpecError, UsageError
from .parser import Arg, Stmt, Value, normalize_text, parse_ast
from .registry import INIT_OPTION_USERS, LAYERS
from .schema import (
    AUGMENT,
    LOSS,
    MAX_WIDTH,
    MIX_LOSSES,
    MIX_OPS,
    OPTIMIZER,
    REQUIRED,
    SCHEDULE,
    STATEMENTS,
    Choice,
    Int,
    OptionError,
    describe_value,
)
from .search.space import refuse_search
from .shapes import fmt_shape

MAX_FILE_BYTES = 1_000_000
MAX_REPEAT = 1000
MAX_LAYERS = 10_000
MAX_ERRORS = 50  # diagnostics reported per file; each renders its line, so a cap keeps that bounded
DATA_SOURCES = ("fashion-mnist", "spirals", "moons", "blobs", "digits")
TOP_LEVEL = ("network", "data", "input", "normalize", "classes", "targets", "augment", "layers",
             "loss", "optimizer", "schedule", "train")
BLOCKS = ("augment", "layers")
BLOCK_HEADS = ("repeat", "residual")  # blocks inside layers (shortcut only inside residual)
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def parse(text: str, path: str = "<string>", *, check_memory: bool = True) -> ir.Model:
    """Parse and check a spec; raise SpecError with every diagnostic found.

    ``check_memory``: also refuse a spec whose training needs more memory than
    :func:`dnnspec.memory.limit` (off to reload a model trained on a larger machine).
    """
    text = normalize_text(text)
    stmts = parse_ast(text, path)
    refuse_search(stmts, text, path)  # choice(...), choose, budget: `dnnspec search` expands them first
    model = _Builder(path, text).build(stmts)
    if check_memory:
        diag = memory.check(model)
        if diag is not None:
            raise SpecError(diag, text)
    return model


def load(path: str | Path, *, check_memory: bool = True) -> ir.Model:
    """Read a ``.dnn`` file and parse it; UsageError when the file cannot be read as text."""
    return parse(read_spec(path), str(path), check_memory=check_memory)


def read_spec(path: str | Path) -> str:
    """The text of a spec file (BOM dropped), or UsageError with one clear line."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, not a .dnn file")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UsageError(f"{path}: file is {size / 1e6:.1f} MB; a spec may be at most "
                             f"{MAX_FILE_BYTES // 1_000_000} MB (is this really a .dnn file?)")
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    if b"\x00" in data:
        raise UsageError(f"{path}: binary file, not a .dnn text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None


def did_you_mean(word: str, choices: Any, what: str) -> str:
    """A hint: the closest known name, or the list of known names."""
    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known {what}: {', '.join(choices)}"


def _short(raw: Any) -> str:
    """A raw value for a message: a long list or string cut to 40 characters."""
    text = repr(raw) if isinstance(raw, str) else describe_value(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _expanded_count(stmts: tuple[Stmt, ...] | list[Stmt]) -> int:
    """How many layers ``stmts`` hold once repeat blocks are expanded: sum of 1 per layer,
    count * inner per repeat, and for a residual block its body, its shortcut and its add,
    without expanding. A repeat whose count is invalid counts once (its own error comes later).
    Recursion is as deep as the nesting (at most parser.MAX_NESTING)."""
    total = 0
    for s in stmts:
        if s.head in ("residual", "shortcut") and s.body is not None:
            total += _expanded_count(s.body) + (s.head == "residual")
            continue
        if s.head != "repeat" or s.body is None:
            total += 1
            continue
        pos = s.positional
        try:
            n = Int(1, MAX_REPEAT).convert(pos[0].raw) if len(pos) == 1 else 1
        except OptionError:
            n = 1
        total += n * _expanded_count(s.body)
    return total


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _count_text(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _name_span(arg: Arg) -> Span:
    s = arg.span
    return Span(s.file, s.line, s.col, s.line, s.col + len(arg.name or ""))


@dataclasses.dataclass
class _Item:
    """A layer as declared: its decl, whether all required options bound, its statement, and what it
    reads (dnnspec.wiring; empty: the line above)."""

    decl: ir.LayerDecl
    ok: bool
    stmt: Stmt
    refs: wiring.Refs = ()


class _Builder:
    """Walks the statements once, collecting diagnostics; builds the Model if there are none."""

    def __init__(self, path: str, source: str):
        self.path = path
        self.source = source
        self.sink = DiagnosticSink()
        self.layers_reliable = True
        self.misspelled: set[str] = set()  # statements an unknown one probably meant
        self.shape_error_seen = False

    def error(self, message: str, span: Span = NO_SPAN, hint: str | None = None) -> None:
        self.sink.error(message, span, hint)

    def fail(self) -> SpecError:
        """The SpecError of the diagnostics so far, cut to MAX_ERRORS (and a line saying how many more)."""
        items = self.sink.items
        if len(items) > MAX_ERRORS:
            more = Diagnostic(f"{len(items) - MAX_ERRORS} more errors not shown", self.file_span(),
                              "fix the ones above first")
            items = [*items[:MAX_ERRORS], more]
        return SpecError(items, self.source)

    def file_span(self) -> Span:
        return Span(self.path, 0, 0, 0, 0)

    # --- top level ------------------------------------------------------------------

    def build(self, stmts: tuple[Stmt, ...]) -> ir.Model:
        found = self._collect(stmts)
        name = self._network(found.get("network"))
        data, data_span = self._data(found.get("data"))
        inp = self._input(found.get("input"))
        norm = self._normalize(found.get("normalize"), inp)
        task = self._task(found)
        augment = self._augment(found.get("augment"), inp)
        layers = self._layers(found.get("layers"), inp)
        loss = self._loss(found.get("loss"), task)
        if augment and loss is not None:
            self._mix_fits(augment, loss)
        optimizer = self._kind_step(found.get("optimizer"), OPTIMIZER, "optimizer", "adam")
        schedule = self._kind_step(found.get("schedule"), SCHEDULE, "schedule", "constant")
        train = self._train(found.get("train"))
        if layers and task and loss and self.layers_reliable:
            self._check_output(layers, task, loss, found)
        if self.sink or inp is None or task is None or layers is None or loss is None:
            raise self.fail()
        lines = self.source.split("\n")
        return ir.Model(
            name=name, input=inp, layers=layers, task=task, loss=loss, optimizer=optimizer,
            schedule=schedule, train=train, normalize=norm, augment=augment, data=data,
            data_span=data_span, source=self.source, path=self.path,
            span=Span(self.path, 1, 1, len(lines), len(lines[-1]) + 1))

    def _collect(self, stmts: tuple[Stmt, ...]) -> dict[str, Stmt]:
        """Top-level statements by head; unknown, duplicate and block misuse reported."""
        found: dict[str, Stmt] = {}
        for s in stmts:
            if s.head not in TOP_LEVEL:
                self._unknown_top(s)
                continue
            if s.head in found:
                first = found[s.head].head_span.line
                self.error(f"duplicate '{s.head}' statement (first written on line {first})", s.head_span,
                           "keep one of them")
                continue
            if s.head in BLOCKS and s.body is None:
                self.error(f"'{s.head}' needs a block", s.head_span, f"write: {s.head} {{ ... }} over several lines")
                continue
            if s.head not in BLOCKS and s.body is not None:
                self.error(f"'{s.head}' takes no block", s.head_span,
                           "only 'layers', 'augment' and 'repeat' have blocks")
            found[s.head] = s
        return found

    def _unknown_top(self, s: Stmt) -> None:
        if s.head in LAYERS or s.head in BLOCK_HEADS or s.head == "shortcut":
            self.error(f"layer '{s.head}' outside the layers block", s.head_span,
                       "put layers inside: layers { ... }")
        elif s.head in AUGMENT:
            self.error(f"augmentation op '{s.head}' outside the augment block", s.head_span,
                       "put it inside: augment { ... }")
        else:
            self.misspelled.update(difflib.get_close_matches(s.head, TOP_LEVEL, n=1, cutoff=0.6))
            self.error(f"unknown statement '{s.head}'", s.head_span, did_you_mean(s.head, TOP_LEVEL, "statements"))

    # --- binding options --------------------------------------------------------------

    def bind(self, schema: Any, what: str, positional: list[Value], named: list[Arg],
             owner: Span) -> tuple[dict[str, Any], set[str], bool]:
        """Bind raw values option by option. Returns (values with defaults, explicit names, ok).

        ``ok`` is False when a required option is missing or invalid.
        """
        values: dict[str, Any] = {}
        failed: set[str] = set()
        self._too_many(schema, what, positional)
        for opt_name, v in zip(schema.positional, positional):
            self._bind_one(schema, opt_name, v.raw, v.span, values, failed)
        seen: dict[str, Arg] = {}
        for a in named:
            if a.name in seen or a.name in values:
                self.error(f"option '{a.name}' of {what} is given twice", _name_span(a), "keep one of them")
                continue
            seen[a.name] = a
            if a.name not in schema.by_name:
                known = [o.name for o in schema.options]
                hint = did_you_mean(a.name, known, f"options of {what}") if known else f"{what} takes no options"
                self.error(f"unknown option '{a.name}' for {what}", _name_span(a), hint)
                continue
            self._bind_one(schema, a.name, a.value.raw, a.value.span, values, failed)
        explicit = set(values)
        ok = True
        for o in schema.options:
            if o.name in values:
                continue
            if o.default is not REQUIRED:
                values[o.name] = o.default  # also stands in for an invalid value, to check the rest
            elif o.name in failed:
                ok = False
            else:
                self.error(f"{what} needs a value for '{o.name}'", owner,
                           f"for example: {schema.example}" if schema.example else None)
                ok = False
        return values, explicit, ok

    def _too_many(self, schema: Any, what: str, positional: list[Value]) -> None:
        n = len(schema.positional)
        if len(positional) <= n:
            return
        extra = positional[n]
        names = [o.name for o in schema.options if o.name not in schema.positional]
        if n == 0:
            msg = f"{what} takes no values without a name, found {len(positional)}"
        else:
            msg = f"{what} takes at most {n} value(s) without a name, found {len(positional)}"
        hint = f"write options as name=value ({', '.join(names)})" if names else "remove the extra value"
        self.error(msg, extra.span, hint)

    def _bind_one(self, schema: Any, opt_name: str, raw: Any, span: Span, values: dict[str, Any],
                  failed: set[str]) -> None:
        try:
            values[opt_name] = schema.bind_one(opt_name, raw)
        except OptionError as e:
            failed.add(opt_name)
            typ = schema.by_name[opt_name].type
            if isinstance(typ, Choice) and isinstance(raw, str):
                hint = did_you_mean(raw, typ.values, "values")
            else:
                hint = f"'{opt_name}' expects: {typ.describe()}"
            self.error(str(e), span, hint)

    def _no_args(self, s: Stmt, what: str) -> None:
        if s.args:
            self.error(f"{what} takes no values", s.args[0].span, "remove them")

    # --- statements -------------------------------------------------------------------

    def _single(self, s: Stmt, what: str, example: str) -> Value | None:
        """The one positional value of a statement like ``network NAME``."""
        for a in s.named:
            self.error(f"'{s.head}' takes no options", _name_span(a), f"write: {example}")
        pos = s.positional
        if not pos:
            self.error(f"'{s.head}' needs {what}", s.head_span, f"write: {example}")
            return None
        if len(pos) > 1:
            self.error(f"'{s.head}' takes one value, found {len(pos)}", pos[1].span, f"write: {example}")
        return pos[0]

    def _network(self, s: Stmt | None) -> str:
        default = Path(self.path).stem if self.path != "<string>" else "model"
        if s is None:
            return default if NAME_RE.fullmatch(default) else "model"
        v = self._single(s, "a name", "network my_net")
        if v is None:
            return default
        if not isinstance(v.raw, str) or not NAME_RE.fullmatch(v.raw):
            self.error(f"network name must be a name like my_net, found {v.raw!r}", v.span,
                       "use letters, digits, '_' and '-'")
            return default
        return v.raw

    def _data(self, s: Stmt | None) -> tuple[str | None, Span]:
        """``data SOURCE [label=NAME] [resize=fit|crop|pad]``; options join the source: ``wine.csv:label=quality``."""
        if s is None:
            return None, NO_SPAN
        example = 'data fashion-mnist  or  data "wine.csv" label=quality  or  data "photos/" resize=fit'
        pos = s.positional
        if not pos:
            self.error("'data' needs a data source", s.head_span, f"write: {example}")
            return None, s.span
        if len(pos) > 1:
            self.error(f"'data' takes one source, found {len(pos)}", pos[1].span, f"write: {example}")
        v = pos[0]
        source = None
        if v.kind == "string" and v.raw:
            source = v.raw
        elif v.kind == "name" and v.raw in DATA_SOURCES:
            source = v.raw
        elif v.kind == "name":
            self.error(f"unknown data source '{v.raw}'", v.span,
                       did_you_mean(v.raw, DATA_SOURCES, "sources") + '; or quote a file path: data "file.npz"')
        else:
            self.error("data needs a source name or a quoted file path", v.span, 'for example: data "train.npz"')
        options = self._data_options(s.named, source)
        return (source_with(source, options) if source else None), v.span

    def _data_options(self, named: list[Arg], source: str | None) -> dict[str, str]:
        """Check ``label=`` (CSV tables) and ``resize=`` (image folders) against the kind of source."""
        lower = (source or "").lower()
        kind = "csv" if lower.endswith((".csv", ".csv.gz")) else "file" if lower.endswith(".npz") else "folder"
        kind = "builtin" if source in DATA_SOURCES else kind
        found: dict[str, str] = {}
        for a in named:
            if a.name not in SOURCE_OPTIONS:
                self.error(f"unknown option '{a.name}' for data", _name_span(a),
                           did_you_mean(a.name, list(SOURCE_OPTIONS), "options of data"))
                continue
            if a.name in found:
                self.error(f"option '{a.name}' of data is given twice", _name_span(a), "keep one of them")
                continue
            applies, choices = SOURCE_OPTIONS[a.name]
            if source is not None and kind != applies:
                what = {"csv": "a .csv table", "folder": "an image folder"}[applies]
                self.error(f"{a.name}= applies to {what}, not to {source}", _name_span(a), "remove it")
                continue
            value = self._data_value(a, choices)
            if value is not None:
                found[a.name] = value
        return found

    def _data_value(self, a: Arg, choices: tuple[str, ...] | None) -> str | None:
        v = a.value
        items = v.raw if v.kind == "list" else [v.raw]
        if choices is not None:
            if v.kind != "name" or v.raw not in choices:
                self.error(f"{a.name}={describe_value(v.raw)} is not one of {', '.join(choices)}", v.span,
                           did_you_mean(str(v.raw), choices, "values"))
                return None
            return v.raw
        texts = [str(x) for x in items if isinstance(x, (str, int)) and not isinstance(x, bool)]
        if len(texts) != len(items) or not texts or not all(texts) or any(c in t for t in texts for c in ",:"):
            self.error(f"{a.name}= needs a column name or index, found {describe_value(v.raw)}", v.span,
                       'for example: label=quality  or  label="wine quality"  or  label=[t1, t2]')
            return None
        return ",".join(texts)

    def _input(self, s: Stmt | None) -> ir.Input | None:
        if s is None:
            if "input" in self.misspelled:
                return None
            self.error("missing 'input' statement", self.file_span(),
                       "add one, like: input [784]  or  input image[1, 28, 28] scale=1/255")
            return None
        pos = s.positional
        kind = None
        if pos and pos[0].kind == "name":
            kind, pos = pos[0], pos[1:]
            if kind.raw not in ("image", "vector"):
                self.error(f"unknown input kind '{kind.raw}'", kind.span, did_you_mean(kind.raw, ("image", "vector"),
                                                                                       "kinds"))
                return None
        values, _, _ = self.bind(STATEMENTS["input"], "input", [], s.named, s.head_span)
        if len(pos) != 1 or pos[0].kind != "list":
            span = pos[1].span if len(pos) > 1 else s.head_span
            self.error("input needs one shape, like [784] or image[1, 28, 28]", span,
                       "write: input [features]  or  input image[C, H, W]")
            return None
        return self._input_shape(kind, pos[0], values["scale"], s)

    def _input_shape(self, kind: Value | None, shape_v: Value, scale: float, s: Stmt) -> ir.Input | None:
        dims = []
        for d in shape_v.raw:
            try:
                dims.append(Int(1, MAX_WIDTH).convert(d))
            except OptionError as e:
                self.error(f"input shape: {e}", shape_v.span, f"each size is a whole number in [1, {MAX_WIDTH:,}]")
                return None
        want_image = kind is not None and kind.raw == "image"
        if want_image and len(dims) != 3:
            self.error(f"image input needs 3 sizes [C, H, W], found {len(dims)}", shape_v.span,
                       "write: input image[1, 28, 28]")
            return None
        if not want_image and len(dims) != 1:
            hint = "write image[C, H, W] for images" if len(dims) == 3 else "write one size: input [784]"
            self.error(f"vector input needs one size, found {len(dims)}", shape_v.span, hint)
            return None
        return ir.Input("image" if want_image else "vector", tuple(dims), scale, s.span)

    def _normalize(self, s: Stmt | None, inp: ir.Input | None) -> ir.Normalize:
        if s is None:
            return ir.Normalize()
        pos, named = s.positional, {a.name: a for a in s.named}
        if pos:
            if len(pos) > 1 or named or pos[0].raw not in ("auto", "none"):
                self.error("normalize takes 'auto', 'none', or mean=... std=...", pos[0].span,
                           "write: normalize auto  or  normalize mean=0.5 std=0.25")
                return ir.Normalize()
            return ir.Normalize(pos[0].raw, (), (), s.span)
        for a in s.named:
            if a.name not in ("mean", "std"):
                self.error(f"unknown option '{a.name}' for normalize", _name_span(a),
                           did_you_mean(a.name, ("mean", "std"), "options of normalize"))
        if "mean" not in named or "std" not in named:
            self.error("normalize needs both mean=... and std=... (or 'auto' / 'none')", s.head_span,
                       "write: normalize mean=0.5 std=0.25")
            return ir.Normalize()
        mean = self._float_list(named["mean"], inp)
        std = self._float_list(named["std"], inp)
        if mean is None or std is None:
            return ir.Normalize()
        return ir.Normalize("values", mean, std, s.span)

    def _float_list(self, a: Arg, inp: ir.Input | None) -> tuple[float, ...] | None:
        """normalize mean= or std=: its schema's range (float32 stays finite and normal), one per channel."""
        typ = STATEMENTS["normalize"].by_name[a.name].type
        try:
            vals = typ.convert(a.value.raw)
        except OptionError as e:
            self.error(f"normalize {a.name}: {e}", a.value.span, f"'{a.name}' takes a {typ.describe()}")
            return None
        if inp is not None and len(vals) not in (1, inp.shape[0]):
            what = "channels" if inp.kind == "image" else "features"
            self.error(f"normalize {a.name} has {len(vals)} values, but the input has {inp.shape[0]} {what}",
                       a.value.span, f"give one value, or one per {what[:-1]} ({inp.shape[0]})")
            return None
        return vals

    def _task(self, found: dict[str, Stmt]) -> ir.Task | None:
        c, t = found.get("classes"), found.get("targets")
        if c is not None and t is not None:
            later = t if t.head_span.line >= c.head_span.line else c
            self.error("'classes' and 'targets' conflict: a spec classifies or regresses, not both",
                       later.head_span, "keep 'classes' for classification, 'targets' for regression")
            return None
        if c is None and t is None:
            if self.misspelled & {"classes", "targets"}:
                return None
            self.error("missing 'classes' or 'targets' statement", self.file_span(),
                       "add 'classes 10' (or class names) for classification, 'targets 1' for regression")
            return None
        if t is not None:
            v = self._single(t, "a number of outputs", "targets 1")
            n = self._int(v, Int(1, MAX_WIDTH), "targets") if v else None
            return ir.Task("regression", targets=n, span=t.span) if n else None
        return self._classes(c)

    def _int(self, v: Value, typ: Int, what: str) -> int | None:
        try:
            return typ.convert(v.raw)
        except OptionError as e:
            self.error(f"{what}: {e}", v.span, f"{what} takes an {typ.describe()}")
            return None

    def _classes(self, s: Stmt) -> ir.Task | None:
        for a in s.named:
            self.error("'classes' takes no options", _name_span(a), 'write: classes 10  or  classes "cat", "dog"')
        pos = s.positional
        if not pos:
            self.error("'classes' needs a count or class names", s.head_span, 'write: classes 10  or  classes "a", "b"')
            return None
        if len(pos) == 1 and pos[0].kind == "number":
            n = self._int(pos[0], Int(2, MAX_WIDTH), "classes")
            return ir.Task("classification", classes=n, span=s.span) if n else None
        names: dict[str, None] = {}  # ordered, with O(1) membership: 100,000 names check in linear time
        for v in pos:
            if not isinstance(v.raw, str) or isinstance(v.raw, bool):
                self.error(f"class names must be strings, found {_short(v.raw)}", v.span,
                           'write names in quotes: classes "cat", "dog"  (or one count: classes 10)')
                return None
            if v.raw in names:
                self.error(f"duplicate class name {_short(v.raw)}", v.span, "each class needs its own name")
                return None
            names[v.raw] = None
        if len(names) < 2:
            self.error("a classifier needs at least 2 classes", pos[0].span, "add the other class names")
            return None
        if len(names) > MAX_WIDTH:
            self.error(f"{len(names):,} class names; at most {MAX_WIDTH:,}", s.head_span, "use fewer classes")
            return None
        return ir.Task("classification", classes=len(names), class_names=tuple(names), span=s.span)

    def _augment(self, s: Stmt | None, inp: ir.Input | None) -> tuple[ir.Step, ...]:
        if s is None:
            return ()
        self._no_args(s, "'augment'")
        vector = inp is not None and inp.kind != "image"
        per_image = vector and any(op.head in AUGMENT and op.head not in MIX_OPS for op in s.body or ())
        if per_image:
            self.error("augment needs an image input, but the input is a vector "
                       f"{fmt_shape(inp.shape)}", s.head_span,
                       "remove the augment block, or declare input image[C, H, W]")
        steps, seen = [], {}
        for op in s.body or ():
            if op.head not in AUGMENT:
                self.error(f"unknown augment op '{op.head}'", op.head_span, did_you_mean(op.head, AUGMENT, "ops"))
                continue
            if op.head in seen:
                self.error(f"duplicate augment op '{op.head}' (first on line {seen[op.head]})", op.head_span,
                           "keep one of them")
                continue
            seen[op.head] = op.head_span.line
            if op.body is not None:
                self.error(f"augment op '{op.head}' takes no block", op.head_span, "remove the { ... }")
            values, explicit, ok = self.bind(AUGMENT[op.head], op.head, op.positional, op.named, op.head_span)
            if ok and inp is not None and inp.kind == "image":
                ok = self._augment_fits(op, values, inp)
            elif ok and vector and not per_image and op.head == "cutmix":  # mixup mixes vectors too
                self.error(f"cutmix needs an image input (it pastes a box of one image into another), but the "
                           f"input is a vector {fmt_shape(inp.shape)}", op.head_span,
                           "use mixup for vector inputs (mixup alpha=0.2), or declare input image[C, H, W]")
                ok = False
            if ok:
                steps.append(ir.Step(op.head, ir.FrozenDict(values), op.span, frozenset(explicit)))
        return tuple(steps)

    def _augment_fits(self, op: Stmt, values: dict[str, Any], inp: ir.Input) -> bool:
        """crop padding and translate pixels at most the image's longer side: more only moves it
        out of view, and crop's padded copy of every batch grows with the square of it."""
        side = max(inp.shape[1:])
        if op.head == "crop":
            opt, amount = "padding", values["padding"]
        elif op.head == "translate" and values["amount"][1] == "px":
            opt, amount = "amount", values["amount"][0]
        else:
            return True
        if amount <= side:
            return True
        spans = {o: v.span for o, v in zip(AUGMENT[op.head].positional, op.positional)}
        spans.update({a.name: a.value.span for a in op.named})
        self.error(f"{op.head} {opt} of {amount:g} pixels is larger than the image "
                   f"({inp.shape[1]}x{inp.shape[2]})", spans.get(opt, op.head_span),
                   f"use at most {side} pixels (a few pixels is usual: {AUGMENT[op.head].example})")
        return False

    def _mix_fits(self, augment: tuple[ir.Step, ...], loss: ir.Step) -> None:
        """mixup and cutmix mix the labels too (dnnspec.augment.Mixer): only losses whose targets mix."""
        for step in augment:
            if step.kind in MIX_OPS and loss.kind not in MIX_LOSSES:
                self.error(f"{step.kind} mixes the labels of two examples, which needs a classification loss "
                           f"({' or '.join(MIX_LOSSES)}); this spec trains with {loss.kind}", step.span,
                           f"remove {step.kind}, or use it with 'classes N' and loss cross_entropy (or 'targets N' "
                           f"with sigmoid and binary_cross_entropy for yes/no labels)")

    def _loss(self, s: Stmt | None, task: ir.Task | None) -> ir.Step | None:
        if s is None:
            kind = "mse" if task is not None and task.kind == "regression" else "cross_entropy"
            return ir.Step(kind, ir.FrozenDict(LOSS[kind].bind([], {})[0]))  # its defaults (label_smoothing=0)
        step = self._kind_step(s, LOSS, "loss", None)
        if step is None or task is None:
            return step
        n_errors = len(self.sink.items)
        if task.kind == "regression" and step.kind == "cross_entropy":
            self.error(f"{step.kind} is a classification loss, but the spec has 'targets'", s.args[0].span,
                       "use 'loss mse' for regression, 'loss binary_cross_entropy' for N yes/no labels "
                       "(multi-label), or 'classes N' for classification")
        elif task.kind == "classification" and step.kind == "mse":
            self.error("mse is a regression loss, but the spec has 'classes'", s.args[0].span,
                       "use 'loss cross_entropy' for classes, or 'targets N' for regression")
        elif step.kind == "binary_cross_entropy" and task.kind == "classification" and task.classes != 2:
            self.error(f"binary_cross_entropy needs exactly 2 classes, found {task.classes}", s.args[0].span,
                       "use 'loss cross_entropy' for more than two classes")
        if len(self.sink.items) > n_errors:
            self.layers_reliable = False  # the output checks would only repeat this mismatch
        return step

    def _kind_step(self, s: Stmt | None, table: dict, what: str, default: str | None) -> ir.Step | None:
        """``optimizer adam lr=...``: a kind, then options bound by that kind's schema."""
        if s is None:
            values, _ = table[default].bind([], {})
            return ir.Step(default, ir.FrozenDict(values))
        pos = s.positional
        if not pos:
            self.error(f"'{what}' needs a kind", s.head_span, f"known {_plural(what)}: {', '.join(table)}")
            return None
        kind = pos[0]
        if not isinstance(kind.raw, str):  # a number, list, range, true/false: nothing to look up
            self.error(f"'{what}' needs a kind name first, found {_short(kind.raw)}", kind.span,
                       f"known {_plural(what)}: {', '.join(table)}")
            return None
        if kind.raw not in table:
            self.error(f"unknown {what} '{kind.raw}'", kind.span, did_you_mean(kind.raw, table, _plural(what)))
            return None
        values, explicit, ok = self.bind(table[kind.raw], kind.raw, pos[1:], s.named, s.head_span)
        return ir.Step(kind.raw, ir.FrozenDict(values), s.span, frozenset(explicit)) if ok else None

    def _train(self, s: Stmt | None) -> ir.FrozenDict:
        schema = STATEMENTS["train"]
        if s is None:
            return ir.FrozenDict(schema.bind([], {})[0])
        values, _, _ = self.bind(schema, "train", s.positional, s.named, s.head_span)
        return ir.FrozenDict(values)

    # --- layers -----------------------------------------------------------------------

    def _layers(self, s: Stmt | None, inp: ir.Input | None) -> tuple[ir.Layer, ...] | None:
        if s is None:
            if "layers" not in self.misspelled:
                self.error("missing 'layers' block", self.file_span(),
                           "add a block: layers { ... } with one layer per line")
            return None
        self._no_args(s, "'layers'")
        count = _expanded_count(s.body or ())
        if count > MAX_LAYERS:  # before expanding: nested repeats multiply (1000^3 would never finish)
            self.error(f"{_count_text(count)} layers after expanding repeat blocks; at most {MAX_LAYERS:,}",
                       s.head_span, "use fewer or smaller repeat blocks")
            return None
        items = self._items(s.body or ())
        if not items:
            if not self.sink:
                self.error("the layers block is empty", s.head_span, "add at least one layer, like: dense 10")
            return None
        self._check_names(items)
        self._check_last_only(items)
        self._wire(items)
        ok_prefix = []
        for it in items:
            if not it.ok:
                self.layers_reliable = False
                break
            ok_prefix.append(it.decl)
        if inp is None:
            self.layers_reliable = False
            return None
        n_errors = len(self.sink.items)
        layers = ir.build_layers(inp.shape, ok_prefix, on_error=self._shape_error)
        if len(self.sink.items) > n_errors:
            self.layers_reliable = False
        elif len(layers) == len(items):
            self._check_used(layers)
        return layers

    def _wire(self, items: list[_Item]) -> None:
        """Resolve what each layer reads (dnnspec.wiring) into ``decl.inputs``; an item with a wrong name is not ok."""
        names = ir.default_names([it.decl for it in items])
        found = wiring.resolve([it.refs for it in items], names, [it.decl.span for it in items], self.error)
        for it, got in zip(items, found):
            if got is None:
                it.ok = False
            else:
                it.decl.inputs, it.decl.input_spans = got

    def _check_used(self, layers: tuple[ir.Layer, ...]) -> None:
        """Every layer but the last (the network's output) feeds a later one."""
        names = [layer.name for layer in layers]
        for i in wiring.unused(names, [layer.inputs for layer in layers]):
            name = names[i]
            self.error(f"the output of layer '{name}' is not used: no later layer reads it", layers[i].span,
                       f"feed it to a later layer (from={name}, or add/concat {name}, ...), or remove it")

    def _shape_error(self, decl: ir.LayerDecl, e: ShapeError) -> None:
        """Report the first shape error only: later ones follow from the shape passed through."""
        if self.shape_error_seen:
            return
        self.shape_error_seen = True
        if isinstance(e, registry.InputMismatch) and decl.block in ("residual", "projection"):
            message, hint = wiring.residual_mismatch(e.shapes[0], e.shapes[1], decl.inputs[1],
                                                     decl.block == "projection")
            self.error(message, decl.span, hint)
            return
        if isinstance(e, registry.InputMismatch) and e.second < len(decl.input_spans):
            self.error(e.message, decl.input_spans[e.second], e.hint)
            return
        span = decl.option_spans.get(e.option or "", decl.span)
        self.error(e.message, span, e.hint)

    def _items(self, stmts: tuple[Stmt, ...] | list[Stmt]) -> list[_Item]:
        items: list[_Item] = []
        for s in stmts:
            if s.head == "repeat":
                items.extend(self._repeat(s))
            elif s.head == "residual":
                items.extend(self._residual(s))
            elif s.head == "shortcut":
                self.error("'shortcut' belongs inside a residual block", s.head_span,
                           "write: residual { ... shortcut { conv2d 64 kernel=1 stride=2 } }")
            elif s.head in LAYERS:
                items.append(self._layer(s))
            elif s.head in TOP_LEVEL:
                self.error(f"'{s.head}' is a top-level statement, not a layer", s.head_span,
                           "move it out of the layers block")
            else:
                close = difflib.get_close_matches(s.head, [*LAYERS, *BLOCK_HEADS], n=1, cutoff=0.6)
                what = "activation" if close and close[0] in registry.activations() else "layer"
                self.error(f"unknown {what} '{s.head}'", s.head_span,
                           did_you_mean(s.head, [*LAYERS, *BLOCK_HEADS], "layers"))
                items.append(_Item(ir.LayerDecl(s.head, {}, set(), s.span), False, s))
        return items

    def _layer(self, s: Stmt) -> _Item:
        if s.body is not None:
            self.error(f"layer '{s.head}' takes no block", s.head_span,
                       "only 'repeat', 'residual' and 'shortcut' have blocks inside layers")
        many = registry.takes_many(s.head)
        refs, named = self._from(s, many)
        positional = [] if many else s.positional
        if many and refs is not None:
            refs = self._joined(s)
        values, explicit, ok = self.bind(LAYERS[s.head], s.head, positional, named, s.head_span)
        spans = {o: v.span for o, v in zip(LAYERS[s.head].positional, positional)}
        spans.update({a.name: a.value.span for a in named})
        if registry.is_weighted(s.head):
            self._init_options_used(values, explicit, spans)
        values["name"] = self._layer_name(values.get("name"), spans.get("name", s.span))
        return _Item(ir.LayerDecl(s.head, values, explicit, s.span, spans), ok and refs is not None, s, refs or ())

    def _layer_name(self, name: str | None, span: Span) -> str | None:
        """A ``name=`` that is a plain name and not ``input`` (which names the network's input), else None."""
        if name is not None and not NAME_RE.fullmatch(name):
            self.error(f"layer name {name!r} is not a plain name", span,
                       "use letters, digits, '_' and '-' (parameters are named <layer>.kernel)")
            return None
        if name == ir.INPUT:
            self.error("'input' names the network's input, not a layer", span, "choose another layer name")
            return None
        return name

    def _from(self, s: Stmt, many: bool) -> tuple[wiring.Refs | None, list[Arg]]:
        """``from=NAME``: what the statement reads instead of the line above (None: a wrong from=);
        and its other options."""
        refs: wiring.Refs | None = ()
        for k, a in enumerate(a for a in s.named if a.name == "from"):
            if many or k:
                hint = f"write the layers {s.head} joins as its values: {s.head} a, b" if many else "keep one of them"
                self.error(f"{s.head} takes no from=" if many else "option 'from' is given twice", _name_span(a), hint)
                refs = None
            elif isinstance(a.value.raw, str) and a.value.kind in ("name", "string"):
                refs = (wiring.Ref(a.value.raw, span=a.value.span),)
            else:
                self.error(f"from= needs a layer name, found {_short(a.value.raw)}", a.value.span,
                           "write: from=conv1  (an earlier layer's name, or input)")
                refs = None
        return refs, [a for a in s.named if a.name != "from"]

    def _joined(self, s: Stmt) -> wiring.Refs | None:
        """The layers ``add a, b, ...`` / ``concat a, b, ...`` names as its values (two or more), or None."""
        pos = s.positional
        bad = [v for v in pos if v.kind not in ("name", "string") or not isinstance(v.raw, str)]
        if bad:
            self.error(f"{s.head} joins layers by name, found {_short(bad[0].raw)}", bad[0].span,
                       f"write: {s.head} conv1, relu2  (earlier layers' names)")
            return None
        if len(pos) < 2:
            self.error(f"{s.head} needs at least two layers to join, found {len(pos)}",
                       pos[0].span if pos else s.head_span, f"write: {s.head} conv1, relu2  (earlier layers' names)")
            return None
        return tuple(wiring.Ref(v.raw, span=v.span) for v in pos)

    def _init_options_used(self, values: dict[str, Any], explicit: set[str], spans: dict[str, Span]) -> None:
        """std, limit and fan given only where the init reads them (else they would do nothing,
        and ``check --render`` could not show them without showing a no-op)."""
        init = values["init"]
        for opt, (used_by, users) in INIT_OPTION_USERS.items():
            if opt in explicit and init not in used_by:
                shown = "auto (he_normal or xavier_normal)" if init == "auto" else init
                self.error(f"{opt}= does nothing with init={shown}", spans.get(opt, NO_SPAN),
                           f"{opt} applies to {users} only: remove it, or choose such an init")

    def _repeat(self, s: Stmt) -> list[_Item]:
        pos = s.positional
        for a in s.named:
            self.error("'repeat' takes no options", _name_span(a), "write: repeat 3 { ... }")
        if s.body is None:
            self.error("'repeat' needs a block", s.head_span, "write: repeat 3 { dense 64 ... }")
            return []
        if len(pos) != 1:
            self.error("'repeat' needs one count", pos[1].span if len(pos) > 1 else s.head_span,
                       "write: repeat 3 { ... }")
            return []
        n = self._int(pos[0], Int(1, MAX_REPEAT), "repeat")
        inner = self._items(s.body)
        if n is None:
            return [dataclasses.replace(it, ok=False) for it in inner[:1]]
        declared = {it.decl.options["name"] for it in inner if it.decl.options.get("name")}
        return [self._suffixed(it, f"_{i}", declared) for i in range(1, n + 1) for it in inner]

    @staticmethod
    def _suffixed(it: _Item, suffix: str, declared: set[str]) -> _Item:
        """A repeat copy of ``it``: its name and the names it reads that the repeated block declares get ``suffix``."""
        name = it.decl.options.get("name")
        opts = dict(it.decl.options)
        if name is not None:
            opts["name"] = name + suffix
        decl = dataclasses.replace(it.decl, options=opts, explicit=set(it.decl.explicit))
        return dataclasses.replace(it, decl=decl, refs=wiring.suffixed(it.refs, declared, suffix))

    def _residual(self, s: Stmt) -> list[_Item]:
        """``residual { body [shortcut { ... }] }`` -> the body's layers, the shortcut's, and their ``add``.

        y = body(x) + x, or body(x) + shortcut(x); x is the line above the block (or its
        ``from=``). The ``add`` takes the block's ``name=`` and points its errors at ``residual``.
        """
        refs, named = self._from(s, False)
        for v in s.positional:
            self.error("'residual' takes no values", v.span, "write: residual { ... }  (options: name=, from=)")
        values, explicit, _ = self.bind(LAYERS["add"], "residual", [], named, s.head_span)
        values["name"] = self._layer_name(values.get("name"), s.head_span)
        if s.body is None:
            self.error("'residual' needs a block", s.head_span,
                       "write: residual { conv2d 32 kernel=3 padding=same ... }  (y = body(x) + x)")
            return []
        shortcuts = [b for b in s.body if b.head == "shortcut"]
        for extra in shortcuts[1:]:
            self.error("a residual block has one shortcut", extra.head_span, "merge the shortcut blocks into one")
        body = self._items([b for b in s.body if b.head != "shortcut"])
        side = self._shortcut(shortcuts[0]) if shortcuts else []
        if not body:
            if not self.sink:
                self.error("the residual block has no layers", s.head_span,
                           "add the layers of its body, like: conv2d 32 kernel=3 padding=same")
            return []
        if refs is None:
            return []
        start = refs[0] if refs else None
        items = self._entered(body, 0, start) + self._entered(side, len(body), start)
        identity = start or wiring.Ref(None, len(body) + 1, s.head_span)
        joined = (wiring.Ref(None, len(side) + 1, s.head_span),
                  wiring.Ref(None, 1, s.head_span) if side else identity)
        decl = ir.LayerDecl("add", values, explicit, s.head_span, {}, block="projection" if side else "residual")
        return [*items, _Item(decl, all(it.ok for it in items), s, joined)]

    def _shortcut(self, s: Stmt) -> list[_Item]:
        for a in s.args:
            self.error("'shortcut' takes no values or options", a.span, "write: shortcut { conv2d 64 kernel=1 }")
        if s.body is None:
            self.error("'shortcut' needs a block", s.head_span, "write: shortcut { conv2d 64 kernel=1 stride=2 }")
            return []
        side = self._items(s.body)
        if not side and not self.sink:
            self.error("the shortcut block has no layers", s.head_span,
                       "remove it for the identity shortcut, or add its layers: conv2d 64 kernel=1")
        return side

    @staticmethod
    def _entered(items: list[_Item], offset: int, start: wiring.Ref | None) -> list[_Item]:
        refs = wiring.enter([it.refs for it in items], offset, start)
        return [it if it.refs == r else dataclasses.replace(it, refs=r) for it, r in zip(items, refs)]

    def _check_names(self, items: list[_Item]) -> None:
        names = ir.default_names([it.decl for it in items])
        first: dict[str, _Item] = {}
        for it, name in zip(items, names):
            if name in first:
                other = first[name]
                user = it.decl.options.get("name") is not None
                hint = (f"the layer on line {other.stmt.head_span.line} is also named '{name}'; "
                        "layers without name= are called <kind><n>, so choose another name")
                span = it.decl.option_spans.get("name", it.stmt.head_span) if user else it.stmt.head_span
                self.error(f"duplicate layer name '{name}'", span, hint)
            else:
                first[name] = it

    def _check_last_only(self, items: list[_Item]) -> None:
        """Kinds allowed only as the last layer (registry ``last_only``: softmax) are last."""
        for it in items[:-1]:
            kind = registry.KINDS.get(it.decl.kind)
            if kind is not None and kind.last_only:
                self.error(f"{kind.name} must be the last layer", it.stmt.head_span,
                           f"the losses expect {kind.name} only at the output; use another activation here")

    # --- output checks ----------------------------------------------------------------

    def _check_output(self, layers: tuple[ir.Layer, ...], task: ir.Task, loss: ir.Step,
                      found: dict[str, Stmt]) -> None:
        last = layers[-1]
        out = last.out_shape
        if len(out) != 1:
            self.error(f"the network ends with shape {fmt_shape(out)}, but its output must be a vector",
                       last.span, "end with flatten (or global_avgpool) and a dense layer")
            return
        multilabel = task.kind == "regression"  # binary_cross_entropy with targets N: one yes/no per output
        want = {"cross_entropy": task.classes, "binary_cross_entropy": task.targets if multilabel else 1,
                "mse": task.targets}[loss.kind]
        if want and out[0] != want:
            self._width_error(layers, out[0], want, task, loss)
        self._check_final_activation(last, loss, found)

    def _width_error(self, layers: tuple[ir.Layer, ...], got: int, want: int, task: ir.Task,
                     loss: ir.Step) -> None:
        weighted = [layer for layer in layers if registry.is_weighted(layer.kind)]
        span = weighted[-1].span if weighted else layers[-1].span
        if loss.kind == "binary_cross_entropy" and task.kind == "regression":
            why = f"targets is {task.targets} (one sigmoid output per yes/no label)"
        elif loss.kind == "binary_cross_entropy":
            why = "binary_cross_entropy with 2 classes needs 1 output (the probability of the second class)"
        elif loss.kind == "mse":
            why = f"targets is {task.targets}"
        else:
            why = f"there are {task.classes} classes"
        self.error(f"the network outputs {got} values, but {why}", span,
                   f"make the last dense layer 'dense {want}'")

    def _check_final_activation(self, last: ir.Layer, loss: ir.Step, found: dict[str, Stmt]) -> None:
        """A loss with a head kind (registry ``head``: softmax for cross_entropy) needs it last; a
        ``last_only`` kind (softmax) ends only a network trained with its own loss."""
        kind, head = last.kind, registry.head_for(loss.kind)
        own = registry.KINDS[kind].head if kind in registry.KINDS else None
        if head is not None and kind != head:
            self.error(f"{loss.kind} needs the network to end with {head}, but it ends with {kind}", last.span,
                       f"add '{head}' as the last layer (the engine fuses it with the loss)")
        elif head is None and kind in registry.KINDS and registry.KINDS[kind].last_only:
            self.error(f"{loss.kind} must not follow {kind}: regression outputs are not probabilities", last.span,
                       f"remove the final {kind} (or use 'loss {own}' with 'classes N')")
