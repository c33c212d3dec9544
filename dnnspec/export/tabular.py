"""The preprocessing graph of a table model: the raw columns in, the features the network was trained on out.

A network trained on a CSV table with text columns (dnnspec.tables) is exported so that it
takes the table as people have it, as skl2onnx's ColumnTransformer models do: one input
per feature column, named by the column's header, ``float32 [N, 1]`` for a number column
and ``string [N, 1]`` for a text column. Inside, before the network's first layer::

    text column  --ai.onnx.ml.OneHotEncoder(cats_strings=vocabulary, zeros=1)-->  [N, 1, K]
                 --Squeeze(axes=[1])-->                                           [N, K]
    every column in file order  --Concat(axis=1)-->                               [N, F]

``[N, F]`` is the one-hot encoded table the spec's ``input [F]`` was trained on (the
input scaling and normalisation follow as before). A text not in a column's vocabulary
sets none of its K features (``zeros=1``): the same all-zero encoding
:func:`dnnspec.tables.encode` gives it. A table of numbers only keeps the single input
``input [N, F]``. The vocabularies, column kinds, label column and class names are also
in the metadata property ``data_schema`` (JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..dataschema import DataSchema, from_meta
from ..errors import UsageError

ML_DOMAIN = "ai.onnx.ml"
#: OneHotEncoder has one version in ai.onnx.ml; version 1 runs on every onnxruntime.
ML_OPSET = 1
PREFIX = "table."


def table_schema(metadata: Mapping[str, Any] | None) -> DataSchema | None:
    """The record in ``metadata`` when it describes a table with text columns (the case that needs a graph)."""
    schema = from_meta(metadata)
    return schema if schema is not None and schema.kind == "table" and schema.has_text else None


def add_table_inputs(proto: Any, metadata: Mapping[str, Any] | None, input_name: str = "input") -> Any:
    """``proto`` with its input ``input_name`` replaced by the raw table columns (see the module docstring).

    Unchanged when ``metadata`` holds no table record with text columns.
    """
    schema = table_schema(metadata)
    if schema is None:
        return proto
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    _check_names(graph, schema)
    features = _fresh(graph, PREFIX + "features")
    for node in graph.node:
        node.input[:] = [features if name == input_name else name for name in node.input]
    axes = _fresh(graph, PREFIX + "axes")
    nodes, parts = [], []
    for k, col in enumerate(schema.columns):
        if col.kind == "number":
            parts.append(col.name)
            continue
        onehot, part = f"{PREFIX}onehot{k}", f"{PREFIX}column{k}"
        nodes.append(helper.make_node("OneHotEncoder", [col.name], [onehot], name=onehot, domain=ML_DOMAIN,
                                      cats_strings=list(col.categories), zeros=1))
        nodes.append(helper.make_node("Squeeze", [onehot, axes], [part], name=part))
        parts.append(part)
    nodes.append(helper.make_node("Concat", parts, [features], name=features, axis=1))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
    inputs = [helper.make_tensor_value_info(c.name, TensorProto.STRING if c.kind == "text" else TensorProto.FLOAT,
                                            ["N", 1]) for c in schema.columns]
    kept = [v for v in graph.input if v.name != input_name]
    del graph.input[:]
    graph.input.extend(inputs + kept)
    _add_ml_opset(proto, helper)
    _set_prop(proto, "input_layout", "table")
    return proto


def _check_names(graph: Any, schema: DataSchema) -> None:
    """Column names become input names: they must not be the name of an output or of another tensor."""
    taken = {o.name for o in graph.output} | {t.name for t in graph.initializer}
    taken |= {name for node in graph.node for name in node.output}
    for col in schema.columns:
        if col.name in taken or col.name.startswith(PREFIX):
            raise UsageError(f"the table's column '{col.name}' has the name of a tensor of the model "
                             f"(an output, layer or parameter); rename the column in the CSV and train again")


def _fresh(graph: Any, base: str) -> str:
    used = {name for node in graph.node for name in (*node.input, *node.output)} | {t.name for t in graph.initializer}
    name, k = base, 1
    while name in used:
        name, k = f"{base}{k}", k + 1
    return name


def _add_ml_opset(proto: Any, helper: Any) -> None:
    if not any(o.domain == ML_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    opsets = [helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(opsets))


def _set_prop(proto: Any, key: str, value: str) -> None:
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value


__all__ = ["ML_DOMAIN", "add_table_inputs", "table_schema"]
