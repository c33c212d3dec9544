"""CSV tables as people have them: a header row, a label column by name, text labels, text columns.

    table = read_table("wine.csv")                       # raw cells, each column's kind found
    part = table_data(table, task, label="quality")      # encoded x, labels y, the DataSchema
    feeds = onnx_feeds(raw_rows, schema)                 # the raw columns as the ONNX model's inputs

Reading (:func:`read_table`): UTF-8 (a BOM is dropped), gzipped when the name ends in ``.gz``,
comma-separated with ``"`` quoting (a quoted cell may hold commas and newlines); blank
lines are skipped. The first row is a header when it holds a text where the next row holds
a number, or text only. A column is a *number* column when at least half of its present
cells are numbers, else a *text* column. Missing cells (empty, ``NA``, ``N/A``, ``NaN``,
``null``, ``?``; any case) are refused where they are used, with their position: dnnspec
does not guess missing values.

Positions in every message: ``FILE: row R, column C (NAME)``, both 1-based, R counting
the file's rows as a spreadsheet shows them (the header is row 1), NAME from the header.

The label: ``label=NAME`` (also ``:NAME``, or a 0-based index ``:0``, ``:-1`` as before),
default the last column (the last ``targets`` columns for regression); every label message
says which column it read and why. Text labels become class names: the spec's
(``classes "benign", "malignant"``), matched by name, else the sorted texts of the file.

Features: number columns as they are; a text column one-hot encoded with its vocabulary
(the sorted distinct texts of the training split, at most ``MAX_CATEGORIES``); a text
not in the vocabulary (at evaluation or prediction) encodes as all zeros, as the exported
model's ``ai.onnx.ml.OneHotEncoder`` (``zeros=1``) does.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dataschema import Column, DataSchema
from .errors import DataError

#: Cells read as missing (compared in lower case, after stripping spaces), as pandas' defaults.
MISSING = frozenset({"", "na", "n/a", "nan", "null", "?"})
#: The most distinct texts a text column may hold: each is a feature (an ID column would be thousands).
MAX_CATEGORIES = 1000
#: Bytes of memory per byte of text while a table with text columns is parsed (cells as Python strings).
TEXT_PARSE_RATIO = 32
#: ... and for a table of numbers only (the text, its lines and the float64 table).
NUMBER_PARSE_RATIO = 6
#: Shown in label messages when the label column is the default one.
LABEL_HINT = "choose another with label=NAME (data \"FILE\" label=NAME, --data FILE:label=NAME or --label NAME)"


@dataclass
class Table:
    """The cells of a CSV file, column by column.

    ``columns[j]``: float64 ``(N,)`` for a number column (NaN where a cell is unusable),
    object ``(N,)`` of stripped strings for a text column. ``rows[i]``: the 1-based file
    row of example ``i``. ``problems[j]``: the first unusable cell of column j as
    ``(example index, what is wrong)``, reported only when the column is used.
    """

    path: str
    names: tuple[str, ...]
    header: bool
    columns: list[np.ndarray]
    kinds: list[str]
    rows: np.ndarray
    problems: list[tuple[int, str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return len(self.columns)

    def column(self, j: int) -> str:
        """``column 3 (age)``: 1-based, with the header's name when there is a header."""
        return f"column {j + 1} ({self.names[j]})" if self.header else f"column {j + 1}"

    def where(self, i: int, j: int) -> str:
        """``wine.csv: row 14, column 3 (age)``."""
        return f"{self.path}: row {int(self.rows[i])}, {self.column(j)}"

    def require(self, j: int, role: str = "") -> None:
        """DataError at the first unusable cell of column ``j`` (missing, or not a number in a number column)."""
        if self.problems[j] is not None:
            i, what = self.problems[j]
            raise DataError(f"{self.where(i, j)}: {what}{role}")

    def find(self, name: str) -> int | None:
        """Index of the column named ``name`` (header name), or None."""
        return self.names.index(name) if self.header and name in self.names else None


# --- reading ------------------------------------------------------------------------------------


def read_text(path: Path, ratio: int = NUMBER_PARSE_RATIO) -> str:
    """The text of a CSV file (gzipped or not), refused before reading when parsing it would not fit in memory."""
    from .datafiles import READ_ERRORS, check_fits

    gz = path.name.lower().endswith(".gz")
    try:
        if not gz:
            check_fits(path, ratio * path.stat().st_size, "reading this CSV file")
        with (gzip.open if gz else open)(path, "rt", encoding="utf-8-sig", newline="") as f:
            return f.read()
    except DataError:
        raise
    except READ_ERRORS as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: cannot read CSV file ({e})") from None


def read_table(path: str | Path, text_columns: Sequence[str] = ()) -> Table:
    """Read a CSV file into a :class:`Table` (see the module docstring); ``text_columns`` are read as text.

    A table of numbers only is parsed by NumPy in one pass; anything else (text, missing
    cells, quoting NumPy does not take) cell by cell with the csv module.
    """
    path = Path(path)
    text = read_text(path)
    lines = text.splitlines()
    filled = [i for i, ln in enumerate(lines[:1000]) if ln.strip()]
    if not filled:
        raise DataError(f"{path}: the CSV file is empty")
    first = _records(lines[filled[0]])
    second = _records(lines[filled[1]]) if len(filled) > 1 else None
    header = _is_header(first, second)
    if not text_columns:
        table = _numbers_only(path, lines, first if header else None)
        if table is not None:
            return table
    check_text_memory(path, len(text))
    return _cell_by_cell(path, text, header, set(text_columns))


def check_text_memory(path: Path, chars: int) -> None:
    from .datafiles import check_fits

    check_fits(path, TEXT_PARSE_RATIO * chars, "parsing this CSV file cell by cell")


def _records(line: str) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return line.split(",")


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _is_header(first: list[str], second: list[str] | None) -> bool:
    """A header holds a text where the next row holds a number, or text only."""
    texts = [not _is_number(c) for c in first]
    if not any(texts):
        return False
    if second is None or all(texts):
        return True
    return any(t and _is_number(b) for t, b in zip(texts, second))


def _header_names(path: Path, cells: list[str]) -> tuple[str, ...]:
    names = tuple(c.strip() for c in cells)
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if not name:
            raise DataError(f"{path}: row 1, column {j + 1}: the header has no name for this column; name every "
                            f"column (the label is chosen by its name)")
        if name in seen:
            raise DataError(f"{path}: row 1: the header names column {seen[name] + 1} and column {j + 1} both "
                            f"'{name}'; give each column its own name")
        seen[name] = j
    return names


def _numbers_only(path: Path, lines: list[str], header: list[str] | None) -> Table | None:
    """NumPy's parser for a table of finite numbers; None when the table holds anything else."""
    rows = np.flatnonzero(np.fromiter((bool(ln.strip()) for ln in lines), bool, len(lines))) + 1
    if header is not None:
        rows = rows[1:]
    if len(rows) == 0:
        names = _header_names(path, header) if header else ()
        raise DataError(f"{path}: the CSV file has a header ({', '.join(names)}) but no rows below it")
    try:
        table = np.loadtxt([lines[r - 1] for r in rows], delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    if not np.isfinite(table.sum()) or (header is not None and len(header) != table.shape[1]):
        return None  # NaN cells, or a width problem: the cell-by-cell reader says where
    names = _header_names(path, header) if header else tuple(f"column {j + 1}" for j in range(table.shape[1]))
    return Table(str(path), names, header is not None, [table[:, j] for j in range(table.shape[1])],
                 ["number"] * table.shape[1], rows, [None] * table.shape[1])


def _cell_by_cell(path: Path, text: str, header: bool, text_columns: set[str]) -> Table:
    """The csv module's reader: quoting, text cells, missing cells, each with its row number."""
    reader = csv.reader(io.StringIO(text))
    records, rows = [], []
    try:
        for rec in reader:
            if any(c.strip() for c in rec):
                records.append(rec)
                rows.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: row {reader.line_num}: not a CSV row ({e})") from None
    names = _header_names(path, records[0]) if header else ()
    body, rows = (records[1:], rows[1:]) if header else (records, rows)
    if not body:
        raise DataError(f"{path}: the CSV file has a header ({', '.join(names)}) but no rows below it")
    width = len(names) if header else len(body[0])
    for rec, r in zip(body, rows):
        if len(rec) != width:
            what = f"the header has {width} columns" if header else f"the first row has {width}"
            raise DataError(f"{path}: row {r} has {len(rec)} cells, but {what}; every row needs one cell per column "
                            f"(quote cells that hold commas: \"a, b\")")
    names = names or tuple(f"column {j + 1}" for j in range(width))
    table = Table(str(path), names, header, [], [], np.asarray(rows, dtype=np.int64))
    for j, cells in enumerate(zip(*body)):
        kind, values, problem = parse_column(cells, names[j] in text_columns)
        table.columns.append(values)
        table.kinds.append(kind)
        table.problems.append(problem)
    return table


def parse_column(cells: Sequence[str], as_text: bool = False) -> tuple[str, np.ndarray, tuple[int, str] | None]:
    """(kind, values, first problem) of one column's cells; see :class:`Table`."""
    cells = [c.strip() for c in cells]
    if not as_text:
        try:
            values = np.array(cells, dtype=np.float64)
            if np.isfinite(values.sum()):
                return "number", values, None
        except ValueError:
            pass
    missing = np.fromiter((c.lower() in MISSING for c in cells), bool, len(cells))
    values = np.full(len(cells), np.nan)
    for i, c in enumerate(cells):
        if not missing[i]:
            try:
                values[i] = float(c)
            except ValueError:
                pass
    numbers = np.isfinite(values)
    present = int((~missing).sum())
    if not as_text and present and 2 * int(numbers.sum()) >= present:
        return "number", values, _number_problem(cells, missing, numbers, present)
    texts = np.array(cells, dtype=object)
    first = int(np.argmax(missing)) if missing.any() else -1
    problem = (first, f"missing value ({cells[first] or 'empty'})" + FILL_HINT) if first >= 0 else None
    return "text", texts, problem


FILL_HINT = "; fill it in or remove the row (dnnspec does not guess missing values)"


def _number_problem(cells: list[str], missing: np.ndarray, numbers: np.ndarray,
                    present: int) -> tuple[int, str] | None:
    bad = ~numbers
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    if missing[i]:
        return i, f"missing value ({cells[i] or 'empty'})" + FILL_HINT
    share = 100.0 * int(numbers.sum()) / present
    shown = cells[i] if len(cells[i]) <= 40 else cells[i][:37] + "..."
    return i, (f"'{shown}' is not a finite number, but {share:.0f}% of this column's cells are numbers; "
               f"fix or remove it")


# --- the label ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelChoice:
    """Which columns hold the label(s), and a phrase saying so for every label message."""

    columns: tuple[int, ...]
    phrase: str


def choose_label(table: Table, spec: str | None, count: int = 1) -> LabelChoice:
    """The label column(s): by header name or 0-based index (negative from the end); default the last ``count``."""
    path, width = table.path, table.width
    if width < 2:
        raise DataError(f"{path}: a CSV data file needs at least two columns (features and a label); it has {width}")
    if not spec:
        cols = tuple(range(width - count, width)) if count < width else (width - 1,)
        named = ", ".join(table.column(j) for j in cols)
        return LabelChoice(cols, f"the label is {named}, the last column{'s' * (len(cols) > 1)} (the default; "
                                 f"{LABEL_HINT})")
    cols = tuple(_label_index(table, name.strip(), spec) for name in spec.split(","))
    if len(set(cols)) < len(cols):
        raise DataError(f"{path}: ':{spec}' names a label column twice; name each once")
    if len(cols) >= width:
        raise DataError(f"{path}: ':{spec}' makes every column a label, which leaves no features")
    named = ", ".join(table.column(j) for j in cols)
    return LabelChoice(cols, f"the label is {named}, chosen by label={spec}")


def _label_index(table: Table, name: str, spec: str) -> int:
    j = table.find(name)
    if j is not None:
        return j
    try:
        i = int(name)
    except ValueError:
        import difflib

        known = f"columns are {', '.join(table.names)}" if table.header else "the file has no header row"
        close = difflib.get_close_matches(name, table.names, n=1) if table.header else []
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DataError(f"{table.path}: no column named '{name}' ({known}) for label={spec}; {hint}write "
                        f"label=NAME with a header name, or a 0-based index") from None
    if not -table.width <= i < table.width:
        raise DataError(f"{table.path}: label column index {i} is outside the {table.width} columns "
                        f"(0-based: 0 to {table.width - 1}, or -1 for the last)")
    return i % table.width


# --- features -----------------------------------------------------------------------------------


def learn_columns(table: Table, features: Sequence[int]) -> tuple[Column, ...]:
    """The schema of the feature columns: kinds, and each text column's sorted vocabulary."""
    cols = []
    for j in features:
        table.require(j)
        if table.kinds[j] == "number":
            cols.append(Column(table.names[j], "number"))
            continue
        vocab = tuple(sorted(set(table.columns[j].tolist())))
        if len(vocab) > MAX_CATEGORIES:
            raise DataError(f"{table.path}: {table.column(j)} holds {len(vocab):,} different texts, more than "
                            f"the {MAX_CATEGORIES:,} a text column may have (each becomes a feature); drop the "
                            f"column, or turn it into numbers")
        cols.append(Column(table.names[j], "text", vocab))
    return tuple(cols)


def match_columns(table: Table, schema: DataSchema, skip: Sequence[int] = ()) -> list[int]:
    """Indices of the schema's feature columns in ``table``, found by header name (by position without a header)."""
    names = [c.name for c in schema.columns]
    if not table.header:
        left = [j for j in range(table.width) if j not in skip]
        if len(left) != len(names):
            raise DataError(f"{table.path}: has no header row and {len(left)} feature columns, but the model takes "
                            f"{len(names)} ({', '.join(names)}); add the header row")
        return left
    missing = [n for n in names if table.find(n) is None]
    if missing:
        raise DataError(f"{table.path}: has no column{'s' * (len(missing) > 1)} {', '.join(repr(n) for n in missing)}; "
                        f"the model takes {', '.join(names)} (matched by the header's names)")
    found = [table.find(n) for n in names]
    for col, j in zip(schema.columns, found):
        table.require(j)
        if col.kind == "number" and table.kinds[j] != "number":
            raise DataError(f"{table.path}: {table.column(j)} holds text, but the model was trained on numbers there")
    return found  # type: ignore[return-value]


def encode(table: Table, features: Sequence[int], columns: Sequence[Column]) -> np.ndarray:
    """float32 ``(N, F)``: numbers as they are, each text column one-hot by its vocabulary (unseen: zeros)."""
    from .datafiles import check_fits

    width = sum(c.width for c in columns)
    check_fits(table.path, 4 * len(table) * width, f"the encoded table ({len(table):,} x {width:,} float32)")
    out = np.zeros((len(table), width), np.float32)
    pos = 0
    for col, j in zip(columns, features):
        values = table.columns[j]
        if col.kind == "number":
            out[:, pos] = values
        elif col.categories:
            idx = category_index(values, col.categories)
            hit = np.flatnonzero(idx >= 0)
            out[hit, pos + idx[hit]] = 1.0
        pos += col.width
    return out


def category_index(values: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """int64 ``(N,)``: the index of each text in ``categories``, -1 where it is not one of them.

    A dict lookup per cell: no fixed-width copy of the texts, whose longest could be long.
    """
    lookup = {c: i for i, c in enumerate(categories)}
    return np.fromiter((lookup.get(v, -1) for v in values), np.int64, len(values))


def raw_rows(table: Table, features: Sequence[int]) -> np.ndarray:
    """object ``(N, C)``: the raw feature cells (floats and strings) in the schema's column order."""
    out = np.empty((len(table), len(features)), dtype=object)
    for k, j in enumerate(features):
        out[:, k] = table.columns[j].astype(object) if table.kinds[j] == "number" else table.columns[j]
    return out


# --- labels -------------------------------------------------------------------------------------


def class_labels(table: Table, j: int, classes: int, names: Sequence[str], phrase: str) -> tuple[np.ndarray,
                                                                                                   tuple[str, ...]]:
    """(int64 class indices, class names) of label column ``j`` for a spec with ``classes`` classes.

    Text labels map to ``names`` (the spec's or a trained model's) by name, else to their
    sorted distinct texts; number labels must be class indices 0..classes-1.
    """
    table.require(j, f"; {phrase}")
    values = table.columns[j]
    if table.kinds[j] == "text":
        return _text_labels(table, j, values, classes, tuple(names), phrase)
    whole = values == np.round(values)
    if not whole.all():
        i = int(np.argmin(whole))
        raise DataError(f"{table.where(i, j)}: label {values[i]:g} is not a whole number; class labels are class "
                        f"indices 0..{classes - 1} or class names; {phrase}")
    bad = (values < 0) | (values >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{table.path}: {data_classes(values)}; the spec says classes {classes} (labels are class "
                        f"indices 0..{classes - 1}; label {values[i]:g} at row {int(table.rows[i])}); {phrase}")
    return values.astype(np.int64), tuple(names)


def _text_labels(table: Table, j: int, values: np.ndarray, classes: int, names: tuple[str, ...],
                 phrase: str) -> tuple[np.ndarray, tuple[str, ...]]:
    found = tuple(sorted(set(values.tolist())))
    if not names:
        if len(found) != classes:
            raise DataError(f"{table.path}: {data_classes(found)}; the spec says classes {classes}; {phrase}")
        names = found
    idx = category_index(values, names)
    if (idx < 0).any():
        i = int(np.argmax(idx < 0))
        import difflib

        close = difflib.get_close_matches(str(values[i]), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"{table.where(i, j)}: label '{values[i]}' is not one of the classes "
                        f"{', '.join(names)}{hint}; {phrase}")
    return idx, names


def data_classes(labels: Any, limit: int = 12, subject: str = "the data") -> str:
    """``the data has 3 classes (0, 1, 2)``: the distinct labels, at most ``limit`` shown."""
    found = sorted(set(labels)) if not isinstance(labels, np.ndarray) else np.unique(labels).tolist()
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in found[:limit])
    more = f", ... {len(found) - limit} more" if len(found) > limit else ""
    return f"{subject} has {len(found)} class{'es' * (len(found) != 1)} ({shown}{more})"


def target_values(table: Table, cols: Sequence[int], phrase: str) -> np.ndarray:
    """float32 ``(N, targets)`` of the regression target columns, which must hold numbers."""
    for j in cols:
        table.require(j, f"; {phrase}")
        if table.kinds[j] != "number":
            raise DataError(f"{table.path}: {table.column(j)} holds text, but a regression spec needs numbers as "
                            f"targets; {phrase}")
    return np.stack([table.columns[j] for j in cols], axis=1).astype(np.float32)


# --- a whole table as training or evaluation data -------------------------------------------------


@dataclass
class TableData:
    """A table ready for the model: features ``x`` float32 ``(N, F)``, labels ``y``, its schema, raw cells."""

    x: np.ndarray
    y: np.ndarray
    schema: DataSchema
    raw: np.ndarray | None  # object (N, C) feature cells, when the exported model takes the raw columns
    phrase: str


def table_data(table: Table, task: Any, label: str | None = None, schema: DataSchema | None = None) -> TableData:
    """Encode ``table`` for a model whose task is ``task`` (ir.Task).

    ``schema`` (a trained model's): its columns (found by name) and vocabularies, its label
    column as the default label and its class names; None: all learned from ``table``.
    """
    classify = task.kind == "classification"
    count = 1 if classify else max(1, int(task.targets))
    if not label and schema is not None and schema.label and all(table.find(n) is not None for n in schema.label):
        label = ",".join(schema.label)
    choice = choose_label(table, label, count)
    features = [j for j in range(table.width) if j not in choice.columns]
    if schema is not None and schema.columns:
        features = match_columns(table, schema, choice.columns)
        columns = schema.columns
    else:
        columns = learn_columns(table, features)
    names = tuple(task.class_names) or (schema.class_names if schema is not None else ())
    if classify:
        if len(choice.columns) != 1:
            raise DataError(f"{table.path}: a classification spec takes one label column; {choice.phrase}")
        y, names = class_labels(table, choice.columns[0], int(task.classes), names, choice.phrase)
    else:
        y, names = target_values(table, choice.columns, choice.phrase), ()
    learned = DataSchema("table", tuple(names), tuple(columns), tuple(table.names[j] for j in choice.columns))
    raw = raw_rows(table, features) if learned.has_text else None
    return TableData(encode(table, features, columns), y, learned, raw, choice.phrase)


# --- inputs for prediction ------------------------------------------------------------------------


def read_inputs(path: str | Path, schema: DataSchema) -> tuple[np.ndarray, list[str]]:
    """A CSV file as a table model takes it, and notes for the user.

    The label column (the schema's, when the file has it) is dropped; columns are found by
    header name. Returns object ``(N, C)`` raw cells for a model with text columns, else
    float32 ``(N, F)``.
    """
    table = read_table(path, [c.name for c in schema.columns if c.kind == "text"])
    notes, skip = [], []
    for name in schema.label:
        j = table.find(name)
        if j is not None:
            skip.append(j)
            notes.append(f"{path}: dropped {table.column(j)}, the label column")
    features = match_columns(table, schema, skip)
    extra = [table.column(j) for j in range(table.width) if j not in features and j not in skip]
    if extra:
        notes.append(f"{path}: ignored {', '.join(extra)}: not a column the model takes")
    if schema.has_text:
        return raw_rows(table, features), notes
    return encode(table, features, schema.columns), notes


def onnx_feeds(x: Any, schema: DataSchema, source: str = "input") -> dict[str, np.ndarray]:
    """The raw table ``x`` as the exported model's inputs: ``{column: (N, 1)}``, float32 or strings.

    ``x``: object ``(N, C)`` (or one row ``(C,)``) of cells in the schema's column order,
    or a mapping ``{column name: values}`` (a dict of lists, a pandas DataFrame).
    """
    names = [c.name for c in schema.columns]
    if isinstance(x, Mapping) or hasattr(x, "columns") and hasattr(x, "__getitem__") and not isinstance(x, np.ndarray):
        given = list(x.keys()) if isinstance(x, Mapping) else list(x.columns)
        missing = [n for n in names if n not in given]
        if missing:
            raise DataError(f"{source}: missing column(s) {', '.join(missing)}; the model takes {', '.join(names)}")
        cols = [np.asarray(x[n], dtype=object).reshape(-1) for n in names]
        if len({len(c) for c in cols}) > 1:
            raise DataError(f"{source}: the columns have different lengths {sorted({len(c) for c in cols})}")
    else:
        arr = np.asarray(x, dtype=object)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise DataError(f"{source}: rows of {arr.shape[-1] if arr.ndim else 0} cells, but the model takes "
                            f"{len(names)} columns ({', '.join(names)})")
        cols = [arr[:, k] for k in range(len(names))]
    return {col.name: _feed(values, col, source) for col, values in zip(schema.columns, cols)}


def _feed(values: np.ndarray, col: Column, source: str) -> np.ndarray:
    if col.kind == "text":
        return np.array([_text(v) for v in values], dtype=object).reshape(-1, 1)
    try:
        out = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(str(v)))
        raise DataError(f"{source}: column {col.name!r} takes numbers, found {str(bad)[:40]!r}") from None
    if not np.isfinite(out.sum(dtype=np.float64)):
        i = int(np.argmax(~np.isfinite(out[:, 0])))
        raise DataError(f"{source}: column {col.name!r} row {i + 1}: missing or not a finite number"
                        + FILL_HINT)
    return out


def _text(v: Any) -> str:
    """A cell as the text a vocabulary holds: whole floats as integers (3.0 -> "3"), None as ""."""
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else str(int(v)) if float(v).is_integer() else str(v)
    return str(v).strip()


__all__ = ["MAX_CATEGORIES", "MISSING", "LabelChoice", "Table", "TableData", "category_index", "choose_label",
           "class_labels", "data_classes", "encode", "learn_columns", "match_columns", "onnx_feeds", "parse_column",
           "raw_rows", "read_inputs", "read_table", "table_data"]
