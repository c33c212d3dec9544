"""How good a trained model is on labelled data: ``dnnspec.evaluate`` and ``dnnspec evaluate``.

    report = dnnspec.evaluate("runs/fashion_mlp", "fashion-mnist")   # a run folder: the NumPy engine
    report = dnnspec.evaluate("model.onnx", (x, y))                    # an ONNX file: onnxruntime
    report["accuracy"], report.confusion, print(report.render()), report.write("out/")

The model gives probabilities (classification) or regression outputs; the engine (a run
folder, a ``.npz`` model, a Net, loaded through :mod:`dnnspec.api`) and onnxruntime (an
``.onnx`` file) paths both end in the metrics and the Report of :mod:`dnnspec.report`
(re-exported here, formulas there), so an exported model and its run folder report the
same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .dataschema import apply, of
from .errors import DataError, DnnspecError, UsageError
from .report import (
    CONFUSION,
    METRICS,
    TOP_K,
    Report,
    Scorer,
    _engine_scorer,
    class_probabilities,
    classification_metrics,
    confusion_matrix,
    evaluate_net,
    make_report,
    multilabel_metrics,
    per_class_scores,
    regression_metrics,
    render_report,
    task_of,
    top_k_accuracy,
)

# --- models: the engine or onnxruntime ---------------------------------------------------------


def _onnx_scorer(pred: Any) -> Scorer:
    meta = pred.metadata
    task = meta.get("task") or ("classification" if pred.is_classifier else "regression")
    task = task_of(task, meta.get("loss", ""))  # targets with binary_cross_entropy: multilabel
    model = _spec_of(meta, str(pred.path))
    width = None
    if model is not None:
        width = model.task.classes if model.task.kind == "classification" else model.task.targets
    elif task == "classification":
        width = len(pred.class_names) or None

    def outputs(x: np.ndarray, batch: int, source: str) -> np.ndarray:
        return pred.predict(x, batch=batch, source=source)

    model = apply(model, pred.schema)  # class names the data gave (text labels, folders)
    scorer = Scorer(str(pred.path), task, list(pred.class_names) if task == "classification" else [], outputs,
                    model, width, tuple(pred.input_shape))
    return _with_schema(scorer, pred.schema, raw=pred.table is not None)


def _with_schema(scorer: Scorer, schema: Any, raw: bool = False) -> Scorer:
    """Note on ``scorer`` what data reading needs besides the spec: the model's data schema
    (class names, a table's columns and vocabularies: dnnspec.dataschema) and whether it takes
    a table's raw cells (an ONNX table model) rather than encoded features."""
    scorer.data_schema, scorer.raw_table = schema, raw
    return scorer


def _spec_of(meta: dict[str, str], where: str) -> Any:
    """The ir.Model of the spec stored in an ONNX file's metadata, or None (another tool's file)."""
    text = meta.get("spec")
    if not text:
        return None
    from . import frontend
    from .errors import SpecError

    try:
        return frontend.parse(text, path=meta.get("spec_path") or where)
    except SpecError:
        return None  # written by another dnnspec version: evaluate without the spec's data checks


def open_model(model: Any, provider: str = "cpu", threads: int | None = None) -> Scorer:
    """A Scorer for an ``.onnx`` file or a Predictor (onnxruntime), a run folder, ``.npz`` model or a Net."""
    if isinstance(model, Scorer):
        return model
    if hasattr(model, "session") and hasattr(model, "predict"):
        return _onnx_scorer(model)
    if hasattr(model, "params") and hasattr(model, "forward"):
        return _with_schema(_engine_scorer(model, getattr(model.model, "name", "net")), of(model))
    path = Path(model)
    if path.suffix.lower() == ".onnx" and not path.is_dir():
        from .export.predictor import Predictor

        return _onnx_scorer(Predictor(path, provider=provider, threads=threads))
    if not path.exists():
        raise UsageError(f"{path}: no such model; give an .onnx file, a run folder of 'dnnspec train' "
                         f"or a .npz model or checkpoint")
    if path.is_file() and path.suffix.lower() != ".npz":
        raise UsageError(f"{path}: not a model file; give an .onnx file, a run folder or a .npz model or checkpoint")
    from .api import load

    net = load(path)
    return _with_schema(_engine_scorer(net, str(path)), of(net))


# --- data --------------------------------------------------------------------------------------


def resolve_data(scorer: Scorer, data: Any, y: Any = None, split: str = "auto",
                 data_dir: str | os.PathLike | None = None, label: str | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                                str]:
    """(x, y, description) from a data source name or path, a Dataset, a pair (x, y), or x with ``y``.

    A source is read as ``dnnspec train --data`` reads it (:func:`dnnspec.data.load_data`,
    checked against the model's spec when it has one, with the class names, columns and
    vocabularies the model was trained with). ``split``: "test", "train", or "auto" (the test
    split when the source has one, else all of it). ``label``: a CSV table's label column
    (default: the model's own label column when the table has it, else the last).
    """
    if split not in ("auto", "test", "train"):
        raise UsageError(f"split must be auto, test or train, found {split!r}")
    if y is not None:
        return np.asarray(data), np.asarray(y), "the given arrays"
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1]), "the given arrays"
    if data is None or isinstance(data, (str, os.PathLike)):
        data = _read(scorer, data, data_dir, label)
    if not hasattr(data, "x_train"):
        raise UsageError(f"data must be a source (a path or a built-in set's name), a Dataset or a pair (x, y); "
                         f"found {type(data).__name__}" + ("; pass the labels as y=" if hasattr(data, "shape") else ""))
    return _split(data, split, getattr(scorer, "raw_table", False))


def _read(scorer: Scorer, source: Any, data_dir: Any, label: str | None = None) -> Any:
    from . import data as data_mod

    if scorer.model is not None:
        if source is None and not scorer.model.data:
            raise UsageError(f"{scorer.name}: no data given and its spec has no 'data' statement; give DATA")
        return data_mod.load_data(None if source is None else str(source), scorer.model, data_dir=data_dir, batch=1,
                                  label=label, schema=getattr(scorer, "data_schema", None))
    if source is None:
        raise UsageError(f"{scorer.name}: no data given (the model has no spec to name its data); give DATA")
    # Another tool's ONNX file: no spec to check against; the source is read as stored.
    return data_mod.read_source(str(source), SimpleNamespace(path="", data=None), data_dir, label=label)


def _split(ds: Any, split: str, raw: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, description) of the chosen split; ``raw``: a table's raw cells (for an ONNX table model)."""
    where = ds.name or ds.path or "data"
    has_test = ds.x_test is not None and ds.y_test is not None
    if split == "test" and not has_test:
        raise DataError(f"{ds.path or where}: has no test split; evaluate all of it with split 'train' "
                        f"(--split train), {len(ds.x_train):,} examples")
    test = split == "test" or (split == "auto" and has_test)
    x = ds.x_test if test else ds.x_train
    cells = getattr(ds, "raw_test" if test else "raw_train", None)
    if raw and cells is not None:
        x = cells  # the exported table model takes the columns as they are, text and all
    if test:
        return x, ds.y_test, f"{where} (test split)"
    return x, ds.y_train, f"{where} ({'training split' if has_test else 'all'})"


def check_labels(y: Any, n: int, scorer: Scorer, where: str) -> np.ndarray:
    """Labels as the model needs them: int64 (N,) in [0, K) or float64 (N, T); DataError naming ``where``."""
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise DataError(f"{where}: {n} examples but {len(y) if y.ndim else 0} labels; give one label per example")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: labels hold {y.dtype} values; expected numbers")
    if scorer.task != "classification":
        y = y.reshape(n, -1).astype(np.float64)
        if not np.isfinite(y).all():
            raise DataError(f"{where}: targets hold NaN or inf; clean the data first")
        bad = (y != 0) & (y != 1)
        if scorer.task == "multilabel" and bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{where}: label {y[i, j]:g} at example {i}, output {j} is not 0 or 1; a multi-label "
                            "model (binary_cross_entropy with targets) needs a 0/1 yes/no per output")
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    k = scorer.width
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}; expected class indices of shape (N,)")
    bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | ((y >= k) if k else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        span = f"0..{k - 1}" if k else "0, 1, 2, ..."
        raise DataError(f"{where}: label {y[i].item()!r} at example {i} is not a class index {span}"
                        + (f"; the model has {k} classes" if k else ""))
    return y.astype(np.int64)


def check_outputs(out: np.ndarray, y: np.ndarray, scorer: Scorer) -> None:
    """The model's output width must fit the labels: K classes (or one sigmoid column), T targets."""
    width = out.reshape(len(out), -1).shape[1]
    if scorer.task == "classification":
        k = 2 if width == 1 else width
        if len(y) and int(y.max()) >= k:
            raise DataError(f"{scorer.name}: labels go up to {int(y.max())} but the model has {k} classes")
    elif width != y.shape[1]:
        raise DataError(f"{scorer.name}: the model has {width} output(s) but the data has {y.shape[1]} target(s)")


# --- entry point -------------------------------------------------------------------------------


def evaluate(model: Any, data: Any = None, y: Any = None, *, split: str = "auto", batch: int | None = None,
             top_k: tuple[int, ...] = TOP_K, data_dir: str | os.PathLike | None = None,
             provider: str = "cpu", label: str | None = None) -> Report:
    """``dnnspec.evaluate``: the Report of ``model`` on labelled ``data``.

    model: an ``.onnx`` file (or a ``dnnspec.Predictor``), a run folder of ``dnnspec train``,
    a ``.npz`` model or checkpoint, or a ``Net``. data: a source as ``dnnspec train --data``
    takes it (``"fashion-mnist"``, ``"data.npz"``, ``"table.csv:label"``; None: the spec's
    ``data`` statement), a ``dnnspec.data.Dataset``, a pair ``(x, y)``, or ``x`` with ``y=``.
    ``batch``: rows per forward pass (default: :meth:`Scorer.batch`, by the model's layer sizes).
    ``label``: a CSV table's label column (default: the one the model was trained with, else the last).
    Image folders and CSV tables with text labels and text columns are read with the class
    names and vocabularies the model was trained with (its ``data_schema``).
    """
    if batch is not None and int(batch) < 1:
        raise UsageError(f"batch must be at least 1, found {batch}")
    scorer = open_model(model, provider)
    x, labels, where = resolve_data(scorer, data, y, split, data_dir, label)
    n = len(x) if np.ndim(x) else 0
    if n == 0:
        raise DataError(f"{where}: no examples to evaluate")
    labels = check_labels(labels, n, scorer, where)
    try:
        out = scorer.outputs(x, batch and int(batch), where)
    except DnnspecError:
        raise
    except (ValueError, TypeError) as e:  # inputs of a shape or type the model cannot take
        raise DataError(f"{where}: the model cannot take these inputs ({e})") from None
    check_outputs(out, labels, scorer)
    return make_report(out, labels, scorer.task, scorer.class_names, tuple(top_k), scorer.name, where)


__all__ = ["CONFUSION", "METRICS", "Report", "Scorer", "check_labels", "class_probabilities",
           "classification_metrics", "confusion_matrix", "evaluate", "evaluate_net", "make_report",
           "multilabel_metrics", "open_model", "per_class_scores", "regression_metrics", "render_report",
           "resolve_data", "top_k_accuracy"]
