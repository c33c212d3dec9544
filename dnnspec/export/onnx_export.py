"""Export a trained network (IR + parameters) as an ONNX model.

    export_model(model, params, "model.onnx")       # an ir.Model and its arrays (a checkpoint's)
    export(net, "model.onnx")                       # anything with .model and .params (a Net)
    proto = to_onnx(model, params, fold=False)      # the ModelProto, not written

The export reads the IR and the arrays only, never the engine: each layer goes through
the converter of its kind (dnnspec.export.converters, keyed by dnnspec.registry), in
the IR's topological order, starting from the tensor of its input (graphs: see
dnnspec.export.builder).

The graph reads raw inputs: its first nodes apply ``input.scale`` and the
normalisation (folded into the first Gemm/Conv when that is exact). Input ``input``
(float32, ``(N, *input.shape)``, N symbolic); output ``probabilities`` (classification
ending in softmax/sigmoid) or ``output``; optionally ``logits`` (the input of a final
softmax/sigmoid, classifier or not) as a second output.
Every export passes ``onnx.checker.check_model(full_check=True)`` and strict shape
inference, and the file is written atomically. See docs/export.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..errors import CheckpointError, UsageError
from ..ir import INPUT, Model
from ..version import __version__

#: The newest opset whose every operator has a kernel in the onnxruntime we depend on (1.32).
DEFAULT_OPSET = 28
#: Softmax over the last axis (opset 13 semantics) is the oldest form we write.
MIN_OPSET = 13
INPUT_NAME = "input"
BATCH_DIM = "N"


def export_model(model: Model, params: Mapping[str, np.ndarray], path: str | os.PathLike, **options: Any) -> Path:
    """Write ``model`` with trained ``params`` to ``path`` as ONNX; return the path. ``options``: :func:`to_onnx`'s."""
    return write_atomic(path, to_onnx(model, params, **options).SerializeToString())


def export(net: Any, path: str | os.PathLike, *, opset: int | None = None, fold: bool = True,
           logits_output: bool = False, metadata: Mapping[str, Any] | None = None,
           dense_op: str = "gemm") -> Path:
    """Write ``net`` (a Net, or anything with ``.model`` and ``.params``) to ``path`` as ONNX; return the path."""
    from ..dataschema import meta_entry

    return export_model(net.model, net.params, path, opset=opset, fold=fold, logits_output=logits_output,
                        metadata={**meta_entry(net), **(metadata or {})}, dense_op=dense_op)


def to_onnx(model: Model, params: Mapping[str, np.ndarray], *, opset: int | None = None, fold: bool = True,
            logits_output: bool = False, metadata: Mapping[str, Any] | None = None,
            dense_op: str = "gemm", source: str = "checkpoint") -> Any:
    """The checked ``onnx.ModelProto`` of ``model`` with trained ``params``.

    fold: fold batch norm into the neighbouring Gemm/Conv (else BatchNormalization nodes);
    dense_op: ``gemm`` or ``matmul`` (MatMul + Add, what dynamic int8 quantization rewrites).
    """
    from onnx import helper

    from .builder import GraphBuilder
    from .converters import CONVERTERS
    from .tabular import add_table_inputs

    opset = check_opset(opset)
    check_params(model, params, source)
    g = GraphBuilder(INPUT_NAME, model.input.shape, dense_op)
    g.opset = opset  # converters choose an operator or its decomposition by it (gelu, layernorm)
    input_affine(g, model, params)
    readers = model.consumers
    g.leave(INPUT, len(readers[INPUT]))
    for layer in model.layers:  # topological order; a layer starts from its (first) input's state
        g.use(layer.inputs[0])
        CONVERTERS[layer.kind](g, layer, params, fold)
        g.leave(layer.name, len(readers[layer.name]))
    g.materialize()
    outputs = name_outputs(g, model, logits_output)
    graph = helper.make_graph(g.nodes, model.name, [_value_info(INPUT_NAME, model.input.shape)],
                              [_value_info(name, shape) for name, shape in outputs], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="dnnspec",
                              producer_version=__version__, ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string=f"dnnspec model {model.name} from {model.path}")
    helper.set_model_props(proto, metadata_props(model, outputs[0][0], metadata))
    proto = add_table_inputs(proto, metadata, INPUT_NAME)  # raw table columns in (export/tabular.py)
    return check_model(proto, outputs)


def check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if not MIN_OPSET <= int(opset) <= DEFAULT_OPSET:
        raise UsageError(f"--opset {opset} is not supported: choose {MIN_OPSET} to {DEFAULT_OPSET} "
                         f"(default {DEFAULT_OPSET})")
    return int(opset)


def check_params(model: Model, params: Mapping[str, np.ndarray], source: str = "checkpoint") -> None:
    """Every parameter of the spec is present, finite and of the shape the spec implies."""
    for spec in model.params:
        if spec.name not in params:
            raise CheckpointError(f"{source}: parameter {spec.name} is missing (the spec {model.path} expects "
                                  f"shape {list(spec.shape)}); export the checkpoint with the spec it was trained on")
        found = tuple(np.shape(params[spec.name]))
        if found != spec.shape:
            raise CheckpointError(f"{source}: parameter {spec.name} has shape {list(found)} but the spec "
                                  f"{model.path} expects {list(spec.shape)}; the checkpoint does not match its spec")
        if not np.all(np.isfinite(params[spec.name])):
            raise CheckpointError(f"{source}: parameter {spec.name} contains NaN or inf; "
                                  "export an earlier checkpoint or the best weights")


def input_moments(model: Model, params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) per channel/feature of the input normalisation, or None when there is none."""
    norm = model.normalize
    if norm.mode == "none":
        return None
    c = model.input.shape[0]
    if "input.mean" in params and "input.std" in params:
        mean, std = np.asarray(params["input.mean"], np.float64), np.asarray(params["input.std"], np.float64)
    elif norm.mode == "values":
        mean, std = np.asarray(norm.mean, np.float64), np.asarray(norm.std, np.float64)
    else:
        raise CheckpointError(f"the spec {model.path} normalises its input (normalize auto) but the parameters "
                              "have no input.mean/input.std: export a trained checkpoint")
    return np.broadcast_to(mean.reshape(-1), (c,)).copy(), np.broadcast_to(std.reshape(-1), (c,)).copy()


def input_affine(g: Any, model: Model, params: Mapping[str, np.ndarray]) -> None:
    """Raw input x -> (x * scale - mean) / std, as one pending affine map x * a + c."""
    c = model.input.shape[0]
    mean, std = input_moments(model, params) or (np.zeros(c), np.ones(c))
    a = np.full(c, float(model.input.scale)) / std
    shift = -mean / std
    if np.any(a != 1) or np.any(shift):
        g.affine(a, shift, "input", into_previous=False)


def name_outputs(g: Any, model: Model, logits_output: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Rename the final tensor to ``probabilities``/``output`` (and its logits to ``logits``).

    ``logits`` is the input of a final softmax or sigmoid, for classifiers and for
    regression models that end in one (e.g. targets in [0, 1]) alike.
    """
    last = model.layers[-1] if model.layers else None
    squashed = last is not None and last.kind in registry.KINDS and registry.KINDS[last.kind].head is not None
    main = "probabilities" if squashed and model.task.kind == "classification" else "output"
    if not g.nodes:
        g.node("Identity", [g.x], main)
    if logits_output and not (squashed and g.nodes[-1].output[0] == last.name):
        raise UsageError(f"--logits needs a model whose last layer is softmax or sigmoid (the logits are its "
                         f"input); {model.path} ends in {last.kind if last else 'its input'}")
    renames = {g.x: main}
    if logits_output:
        renames[g.nodes[-1].input[0]] = "logits"
    for node in g.nodes:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    out_shape = model.output_shape
    outputs = [(main, out_shape)]
    if logits_output:
        outputs.append(("logits", out_shape))
    return outputs


def _value_info(name: str, shape: tuple[int, ...]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *shape])


def metadata_props(model: Model, output: str, extra: Mapping[str, Any] | None) -> dict[str, str]:
    """Everything a client needs to use the file: spec, classes, input layout, normalisation."""
    task = model.task
    names = list(task.class_names) or [str(i) for i in range(task.classes)]
    moments = None
    if model.normalize.mode != "none":
        moments = {"mode": model.normalize.mode, "mean": list(model.normalize.mean), "std": list(model.normalize.std)}
    props = {
        "dnnspec_version": __version__,
        "model_name": model.name,
        "spec": model.source,
        "spec_path": model.path,
        "task": task.kind,
        "class_names": json.dumps(names if task.kind == "classification" else []),
        "input_shape": json.dumps(list(model.input.shape)),
        "input_layout": "NCHW" if model.input.kind == "image" else "NF",
        "input_scale": repr(float(model.input.scale)),
        "normalization": json.dumps(moments),
        "output": output,
        "loss": model.loss.kind,
    }
    for key, value in (extra or {}).items():
        props[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return props


def check_model(proto: Any, outputs: list[tuple[str, tuple[int, ...]]]) -> Any:
    """Run the full ONNX checker and strict shape inference; the inferred outputs must match."""
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    shapes = {v.name: v for v in inferred.graph.output}
    for name, shape in outputs:
        dims = [d.dim_value or d.dim_param for d in shapes[name].type.tensor_type.shape.dim]
        if dims != [BATCH_DIM, *shape]:
            raise RuntimeError(f"exporter bug: output {name} inferred as {dims}, expected {[BATCH_DIM, *shape]}")
    return proto


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to ``path`` atomically; a missing folder or no permission is a UsageError."""
    from ..fileio import atomic_write_bytes

    return atomic_write_bytes(path, data)
