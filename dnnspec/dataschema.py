"""What a model learned from its data besides its weights: the *data schema* record.

A network trained on a CSV table or an image folder needs, to be used later, facts that
are in neither the spec nor the weights: the class names its text labels or folder names
gave, the table's columns (their names, which hold numbers and which text, and each text
column's vocabulary, learned from the training split), the label column, how images were
resized. :class:`DataSchema` holds them; it travels

- on the ``Net`` as ``net.data_schema`` (:func:`attach`; ``load_data`` returns it as
  ``Dataset.schema``),
- in checkpoints and saved models as ``meta["data_schema"]`` (:func:`meta_entry`,
  :func:`from_meta`),
- in the ONNX file as the metadata property ``data_schema`` (JSON), from which
  ``Predictor``, ``evaluate`` and ``serve`` read it back.

It never changes the IR's layers: :func:`apply` only fills ``task.class_names`` of a spec
that says ``classes N`` without naming them.

The options a file source takes (``data "wine.csv" label=quality``,
``--data photos/:resize=fit``) are listed here in :data:`SOURCE_OPTIONS`, so that the front
end can check them without importing NumPy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

#: Options of file sources: name -> (what it applies to, allowed values or None for any).
SOURCE_OPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "label": ("csv", None),
    "resize": ("folder", ("fit", "crop", "pad")),
}
RESIZE_MODES = SOURCE_OPTIONS["resize"][1]
KINDS = ("table", "images")
COLUMN_KINDS = ("number", "text")


@dataclass(frozen=True)
class Column:
    """One feature column of a table: its header name, ``number`` or ``text``, a text column's vocabulary.

    A text column is one-hot encoded: ``len(categories)`` features, category ``k`` sets
    feature ``k``; a text not in ``categories`` sets none (all zeros).
    """

    name: str
    kind: str = "number"
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Features this column becomes: 1 for numbers, one per category for text."""
        return len(self.categories) if self.kind == "text" else 1


@dataclass(frozen=True)
class DataSchema:
    """The data-derived facts of a model: see the module docstring.

    kind ``table``: ``columns`` (the feature columns in file order), ``label`` (the label
    column's name, or several for regression targets); kind ``images``: ``resize``
    (``fit``, ``crop``, ``pad`` or "" when images had the spec's size). Both:
    ``class_names`` (text labels or folder names; () when labels were class indices).
    """

    kind: str
    class_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    label: tuple[str, ...] = ()
    resize: str = ""

    @property
    def has_text(self) -> bool:
        """True when some feature column holds text: the ONNX model then takes one input per column."""
        return any(c.kind == "text" for c in self.columns)

    @property
    def width(self) -> int:
        """Features after one-hot encoding: what ``input [F]`` of the spec must say."""
        return sum(c.width for c in self.columns)

    def describe_columns(self) -> str:
        """``11 number columns, 2 text columns (color: 3 values, shape: 4 values)``."""
        numbers = sum(c.kind == "number" for c in self.columns)
        texts = [c for c in self.columns if c.kind == "text"]
        out = f"{numbers} number column{'s' * (numbers != 1)}"
        if texts:
            shown = ", ".join(f"{c.name}: {len(c.categories)} values" for c in texts[:6])
            more = f", {len(texts) - 6} more" if len(texts) > 6 else ""
            out += f", {len(texts)} text column{'s' * (len(texts) != 1)} one-hot encoded ({shown}{more})"
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "class_names": list(self.class_names)}
        if self.kind == "table":
            d["label"] = list(self.label)
            d["columns"] = [{"name": c.name, "kind": c.kind, **({"categories": list(c.categories)}
                                                                 if c.kind == "text" else {})}
                            for c in self.columns]
        else:
            d["resize"] = self.resize
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSchema:
        """Inverse of :meth:`to_dict`; ValueError when ``d`` is not such a record."""
        if not isinstance(d, Mapping) or d.get("kind") not in KINDS:
            raise ValueError("not a data schema record")
        cols = []
        for c in d.get("columns", ()):
            if not isinstance(c, Mapping) or c.get("kind") not in COLUMN_KINDS or not isinstance(c.get("name"), str):
                raise ValueError(f"bad column entry {c!r}")
            cols.append(Column(c["name"], c["kind"], tuple(str(v) for v in c.get("categories", ()))))
        resize = str(d.get("resize") or "")
        if resize and resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}")
        return cls(d["kind"], tuple(str(n) for n in d.get("class_names", ())), tuple(cols),
                   tuple(str(n) for n in d.get("label", ())), resize)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


# --- where the record lives ------------------------------------------------------------------------

META_KEY = "data_schema"


def of(net: Any) -> DataSchema | None:
    """The record a Net carries (None for a net trained on arrays, IDX or a built-in set)."""
    return getattr(net, "data_schema", None)


def attach(net: Any, schema: DataSchema | None) -> Any:
    """Give ``net`` its data's record, and the class names to a spec that said ``classes N`` only."""
    net.data_schema = schema
    if schema is not None:
        net.model = apply(net.model, schema)
    return net


def apply(model: Any, schema: DataSchema | None) -> Any:
    """``model`` with the record's class names when its spec names none (same count), else unchanged."""
    task = getattr(model, "task", None)
    if schema is None or task is None or task.class_names or not schema.class_names:
        return model
    if task.kind != "classification" or len(schema.class_names) != task.classes:
        return model
    return replace(model, task=replace(task, class_names=tuple(schema.class_names)))


def meta_entry(net: Any) -> dict[str, Any]:
    """``{"data_schema": {...}}`` for a checkpoint's or an ONNX file's metadata, or {} when there is none."""
    schema = of(net)
    return {META_KEY: schema.to_dict()} if schema is not None else {}


def from_meta(meta: Mapping[str, Any] | None) -> DataSchema | None:
    """The record of a checkpoint's meta (a dict) or an ONNX metadata map (a JSON string); None if absent.

    A damaged record is treated as absent: the weights still work without it.
    """
    raw = (meta or {}).get(META_KEY)
    if raw is None:
        return None
    try:
        return DataSchema.from_dict(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, TypeError):
        return None


def source_with(source: str, options: Mapping[str, str]) -> str:
    """``wine.csv`` + {"label": "quality"} -> ``wine.csv:label=quality`` (the form ``--data`` takes)."""
    if not options:
        return source
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{source},{opts}" if ":" in source and not source.endswith(":") else f"{source.rstrip(':')}:{opts}"


__all__ = ["COLUMN_KINDS", "Column", "DataSchema", "META_KEY", "RESIZE_MODES", "SOURCE_OPTIONS", "apply", "attach",
           "from_meta", "meta_entry", "of", "source_with"]
