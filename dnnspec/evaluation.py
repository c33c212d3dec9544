"""How good a trained model is on labelled data: ``dnnspec.evaluate`` and ``dnnspec evaluate``.

    report = dnnspec.evaluate("runs/fashion_mlp", "fashion-mnist")   # a run folder: the NumPy engine
    report = dnnspec.evaluate("model.onnx", (x, y))                    # an ONNX file: onnxruntime
    report["accuracy"], report.confusion, print(report.render()), report.write("out/")

The model gives probabilities ``P`` (N, K) (one sigmoid column ``p`` becomes ``[1 - p, p]``)
or regression outputs ``O`` (N, T); both paths go through the same functions below, so an
exported model and its run folder report the same numbers. Metrics (pure NumPy;
scikit-learn's are the reference in ``tests/test_evaluate.py``):

* loss (classification): mean_n -log max(P[n, y_n], 1e-12), the cross-entropy of the
  probabilities (a probability that underflowed to 0 costs at most 27.6);
  accuracy: mean [argmax_k P[n, k] = y_n]; top-k accuracy: mean [#{j: P[n, j] > P[n, y_n]} < k].
* confusion matrix C (K, K): C[i, j] = #{n: y_n = i, prediction j} (rows true, columns predicted).
* per class: precision = C[k, k] / sum_i C[i, k], recall = C[k, k] / sum_j C[k, j],
  F1 = 2 tp / (2 tp + fp + fn), support = sum_j C[k, j]; 0 where a denominator is 0.
  Macro average: mean over the K classes; weighted: weighted by support.
* regression: loss = MSE over all N*T values (the training loss), per target MAE, MSE,
  RMSE = sqrt(MSE) and R^2 = 1 - SS_res / SS_tot (1 when both are 0, 0 when only SS_tot is),
  averaged over the targets with equal weights.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import DataError, DnnspecError, UsageError

METRICS = "metrics.json"
CONFUSION = "confusion.png"
TOP_K = (3, 5)
PROB_FLOOR = 1e-12
EVAL_BATCH = 1024  # rows per forward pass when the model's layer sizes are unknown (another tool's ONNX file)
ACTIVATION_BUDGET = 64 << 20  # bytes of the widest layer's float32 output per forward pass


# --- metrics ---------------------------------------------------------------------------------


def class_probabilities(out: np.ndarray) -> np.ndarray:
    """Model outputs -> (N, K) float64 probabilities; one sigmoid column p -> [1 - p, p]."""
    p = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    return np.concatenate([1.0 - p, p], axis=1) if p.shape[1] == 1 else p


def confusion_matrix(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """(K, K) int64 counts, C[i, j] = examples of true class i predicted as j (one bincount)."""
    return np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (each (K,), 0 where undefined) and support (K,) from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = predicted + support  # (tp + fp) + (tp + fn) = 2 tp + fp + fn
        f1 = np.where(denom > 0, 2.0 * tp / denom, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def top_k_accuracy(p: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k most probable (ties counted in its favour)."""
    p_true = p[np.arange(len(y)), y]
    return float(np.mean((p > p_true[:, None]).sum(axis=1) < k))


def classification_metrics(out: np.ndarray, y: np.ndarray, top_k: tuple[int, ...] = TOP_K) -> dict[str, Any]:
    """Loss, accuracy, top-k, per-class scores with macro and weighted averages, confusion matrix.

    out: probabilities (N, K) or (N, 1) for a sigmoid; y: (N,) int class indices in [0, K).
    """
    p = class_probabilities(out)
    n, k = p.shape
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    scores = per_class_scores(cm)
    support = scores["support"]
    weights = support / max(int(support.sum()), 1)
    avg = {"macro_avg": {m: float(np.mean(scores[m])) for m in ("precision", "recall", "f1")},
           "weighted_avg": {m: float(np.dot(weights, scores[m])) for m in ("precision", "recall", "f1")}}
    for a in avg.values():
        a["support"] = int(n)
    return {
        "loss": float(-np.mean(np.log(np.maximum(p[np.arange(n), y], PROB_FLOOR)))),
        "accuracy": float(np.mean(pred == y)),
        "top_k_accuracy": {str(j): top_k_accuracy(p, y, j) for j in top_k if 1 < j < k},
        **avg,
        "per_class": {m: scores[m] for m in ("precision", "recall", "f1", "support")},
        "confusion_matrix": cm,
    }


def regression_metrics(out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """MSE loss over all values; MAE, MSE, RMSE, R^2 per target (T,) and their means. out, y: (N, T)."""
    o = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    t = np.asarray(y, dtype=np.float64).reshape(o.shape)
    d = o - t
    mse = np.mean(d * d, axis=0)
    ss_res = np.sum(d * d, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res > 0, 0.0, 1.0))
    per = {"mae": np.mean(np.abs(d), axis=0), "mse": mse, "rmse": np.sqrt(mse), "r2": r2}
    return {"loss": float(np.mean(d * d)), **{m: float(np.mean(v)) for m, v in per.items()}, "per_target": per}


# --- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    """The result of :func:`evaluate`: ``metrics`` (flat numbers), per-class or per-target arrays.

    ``report["accuracy"]`` reads ``metrics``; ``to_dict()`` is what ``--json`` and
    ``metrics.json`` hold; ``render(width)`` is the terminal text; ``write(folder)`` writes
    ``metrics.json`` and (classification, with matplotlib) ``confusion.png``.
    """

    task: str
    examples: int
    metrics: dict[str, Any]
    class_names: list[str] = field(default_factory=list)
    per_class: dict[str, np.ndarray] = field(default_factory=dict)
    per_target: dict[str, np.ndarray] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    model: str = ""
    data: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def summary(self) -> dict[str, float]:
        """The headline numbers: loss and accuracy (classification) or loss, MAE, RMSE, R^2."""
        keys = ("loss", "accuracy") if self.task == "classification" else ("loss", "mae", "rmse", "r2")
        return {k: self.metrics[k] for k in keys}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model, "data": self.data, "examples": self.examples, "task": self.task}
        if self.task != "classification":
            d.update({k: self.metrics[k] for k in ("loss", "mae", "mse", "rmse", "r2")})
            d["per_target"] = [{"target": j, **{m: float(v[j]) for m, v in self.per_target.items()}}
                               for j in range(len(self.per_target["mae"]))]
            return d
        m = self.metrics
        d.update({"loss": m["loss"], "accuracy": m["accuracy"], "top_k_accuracy": m["top_k_accuracy"],
                  "macro_avg": m["macro_avg"], "weighted_avg": m["weighted_avg"]})
        d["per_class"] = [{"class": i, "name": name, **{s: _num(self.per_class[s][i]) for s in self.per_class}}
                          for i, name in enumerate(self.class_names)]
        d["confusion_matrix"] = {"rows": "true class", "columns": "predicted class", "labels": self.class_names,
                                 "counts": self.confusion.tolist()}
        return d

    def render(self, width: int | None = None) -> str:
        """Headline, per-class table with averages and the confusion matrix (when it fits ``width``)."""
        return render_report(self, width)

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """``folder/metrics.json`` and, for classification with matplotlib, ``folder/confusion.png``."""
        from .fileio import atomic_write_text

        folder = Path(folder)
        written = [atomic_write_text(folder / METRICS, json.dumps(self.to_dict(), indent=1) + "\n",
                                     make_parents=True)]
        if self.task == "classification":
            from .plots import write_confusion

            png = write_confusion(folder / CONFUSION, self.confusion, self.class_names,
                                  title=f"{self.model}: accuracy {self.metrics['accuracy']:.4f} on {self.data}")
            if png is not None:
                written.append(png)
        return written


def _num(v: Any) -> int | float:
    return int(v) if isinstance(v, (np.integer, int)) else float(v)


def make_report(out: np.ndarray, y: np.ndarray, task: str, class_names: list[str] | tuple[str, ...] = (),
                top_k: tuple[int, ...] = TOP_K, model: str = "", data: str = "") -> Report:
    """A Report from model outputs and checked labels (``task``: classification or regression)."""
    if task != "classification":
        m = regression_metrics(out, y)
        return Report(task, len(y), {k: v for k, v in m.items() if k != "per_target"},
                      per_target=m["per_target"], model=model, data=data)
    m = classification_metrics(out, y, top_k)
    k = m["confusion_matrix"].shape[0]
    names = list(class_names)[:k] if len(class_names) >= k else [str(i) for i in range(k)]
    flat = {key: v for key, v in m.items() if key not in ("per_class", "confusion_matrix")}
    return Report(task, len(y), flat, names, m["per_class"], confusion=m["confusion_matrix"], model=model, data=data)


# --- text -------------------------------------------------------------------------------------


NAME_WIDTH = 24
MAX_CONFUSION_CLASSES = 30  # printed without a terminal width; confusion.png and --json hold any size


def render_report(r: Report, width: int | None = None) -> str:
    """The terminal text of a Report; tables are narrowed (shorter class names) to ``width`` when given."""
    lines = [f"{r.model} on {r.data}: {r.examples:,} examples"]
    m = r.metrics
    if r.task != "classification":
        lines.append(f"loss (MSE) {m['loss']:.6g}  MAE {m['mae']:.6g}  RMSE {m['rmse']:.6g}  R2 {m['r2']:.4f}")
        if len(r.per_target["mae"]) > 1:
            lines += ["", f"{'target':>6}  {'MAE':>10}  {'RMSE':>10}  {'R2':>8}"]
            lines += [f"{j:>6}  {r.per_target['mae'][j]:>10.4g}  {r.per_target['rmse'][j]:>10.4g}  "
                      f"{r.per_target['r2'][j]:>8.4f}" for j in range(len(r.per_target["mae"]))]
        return "\n".join(lines)
    tops = "".join(f"  top-{k} {v:.4f}" for k, v in m["top_k_accuracy"].items())
    lines.append(f"loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f}{tops}")
    lines += ["", *_class_table(r, width), "", *_confusion_table(r, width)]
    return "\n".join(lines)


def _label(i: int, name: str, w: int) -> str:
    """"3 Dress" in ``w`` characters: the name shortened (with ~) or left out, the index kept."""
    text = name if name == str(i) else f"{i} {name}"
    if len(text) <= w:
        return text
    return text[:w - 1] + "~" if w >= len(str(i)) + 3 else str(i)


def _class_table(r: Report, width: int | None) -> list[str]:
    """sklearn's classification_report layout: a row per class, then the macro and weighted averages."""
    labels = [f"{i} {n}" if n != str(i) else n for i, n in enumerate(r.class_names)]
    w = max(12, min(NAME_WIDTH, max(map(len, labels))))
    if width:
        w = max(8, min(w, width - 38))
    head = f"{'class':<{w}}  precision  recall  f1-score  support"

    def row(label: str, p: float, rc: float, f: float, s: int) -> str:
        return f"{label:<{w}}  {p:>9.4f}  {rc:>6.4f}  {f:>8.4f}  {s:>7,}"

    pc = r.per_class
    rows = [row(_label(i, n, w), pc["precision"][i], pc["recall"][i], pc["f1"][i], int(pc["support"][i]))
            for i, n in enumerate(r.class_names)]
    avgs = [row(name, a["precision"], a["recall"], a["f1"], a["support"])
            for name, a in (("macro avg", r.metrics["macro_avg"]), ("weighted avg", r.metrics["weighted_avg"]))]
    return [head, *rows, "", *avgs]


def _confusion_table(r: Report, width: int | None) -> list[str]:
    """Counts with a row per true class (index and name) and a column per predicted class (index)."""
    cm, k = r.confusion, len(r.class_names)
    cell = max(len(f"{int(cm.max()):,}"), len(str(k - 1))) + 1
    w = max(12, min(NAME_WIDTH, max(len(f"{i} {n}") for i, n in enumerate(r.class_names))))
    if width:
        w = min(w, width - k * (cell + 1))
    if (width and w < len(str(k - 1))) or (not width and k > MAX_CONFUSION_CLASSES):
        return [f"confusion matrix: {k} classes, too wide to print here; write it with --out DIR "
                f"(confusion.png) or --json"]
    lines = ["confusion matrix (rows: true, columns: predicted)",
             " " * w + "".join(f" {j:>{cell}}" for j in range(k))]
    lines += [f"{_label(i, n, w):<{w}}" + "".join(f" {int(c):>{cell},}" for c in cm[i])
              for i, n in enumerate(r.class_names)]
    return lines


# --- models: the engine or onnxruntime ---------------------------------------------------------


@dataclass
class Scorer:
    """What evaluation needs of a model: outputs for raw inputs, the task, the class names, its spec."""

    name: str
    task: str
    class_names: list[str]
    outputs_fn: Any
    model: Any = None  # the ir.Model (spec) when known: data sources are read and checked against it
    width: int | None = None  # the output width (classes, or targets)
    input_shape: tuple[int, ...] = ()  # per example; -1 where any size goes

    def outputs(self, x: np.ndarray, batch: int | None = None, source: str = "input") -> np.ndarray:
        return self.outputs_fn(x, batch or self.batch(), source)

    def batch(self) -> int:
        """Rows per pass: as many as keep the widest layer's output within ACTIVATION_BUDGET (256..16384).

        Fewer, larger passes are faster (a 10,000-image MLP pass in one GEMM per layer);
        the budget keeps a conv net's activations bounded.
        """
        if self.model is None:
            return EVAL_BATCH
        widest = max([math.prod(self.model.input.shape)] + [math.prod(la.out_shape) for la in self.model.layers])
        return int(min(16384, max(256, ACTIVATION_BUDGET // (4 * max(widest, 1)))))


def _engine_scorer(net: Any, name: str) -> Scorer:
    model = net.model

    def outputs(x: np.ndarray, batch: int, source: str) -> np.ndarray:
        x = np.asarray(x)
        want = tuple(model.input.shape)
        if x.shape[1:] != want and x.ndim >= 2 and math.prod(x.shape[1:]) == math.prod(want):
            x = x.reshape((len(x), *want))  # flat rows or (N, H, W), as the data checks allow
        try:
            return np.concatenate([net.forward(x[i:i + batch]) for i in range(0, len(x), batch)])
        except DataError as e:
            raise DataError(f"{source}: {e}") from None

    task = model.task
    names = list(task.class_names) or [str(i) for i in range(task.classes)]
    width = task.classes if task.kind == "classification" else task.targets
    return Scorer(name, task.kind, names if task.kind == "classification" else [], outputs, model, width,
                  tuple(model.input.shape))


def _onnx_scorer(pred: Any) -> Scorer:
    meta = pred.metadata
    task = meta.get("task") or ("classification" if pred.is_classifier else "regression")
    model = _spec_of(meta, str(pred.path))
    width = None
    if model is not None:
        width = model.task.classes if model.task.kind == "classification" else model.task.targets
    elif task == "classification":
        width = len(pred.class_names) or None

    def outputs(x: np.ndarray, batch: int, source: str) -> np.ndarray:
        return pred.predict(x, batch=batch, source=source)

    return Scorer(str(pred.path), task, list(pred.class_names) if task == "classification" else [], outputs,
                  model, width, tuple(pred.input_shape))


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
        return _engine_scorer(model, getattr(model.model, "name", "net"))
    path = Path(model)
    if path.suffix.lower() == ".onnx" and not path.is_dir():
        from .export.predictor import Predictor

        return _onnx_scorer(Predictor(path, provider=provider, threads=threads))
    if not path.exists():
        raise UsageError(f"{path}: no such model; give an .onnx file, a run folder of 'dnnspec train' "
                         f"or a .npz model or checkpoint")
    if path.is_file() and path.suffix.lower() != ".npz":
        raise UsageError(f"{path}: not a model file; give an .onnx file, a run folder or a .npz model or checkpoint")
    from .checkpoint import load_net

    return _engine_scorer(load_net(path), str(path))


# --- data --------------------------------------------------------------------------------------


def resolve_data(scorer: Scorer, data: Any, y: Any = None, split: str = "auto",
                 data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, description) from a data source name or path, a Dataset, a pair (x, y), or x with ``y``.

    A source is read as ``dnnspec train --data`` reads it (:func:`dnnspec.data.load_data`,
    checked against the model's spec when it has one). ``split``: "test", "train", or
    "auto" (the test split when the source has one, else all of it).
    """
    if split not in ("auto", "test", "train"):
        raise UsageError(f"split must be auto, test or train, found {split!r}")
    if y is not None:
        return np.asarray(data), np.asarray(y), "the given arrays"
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1]), "the given arrays"
    if data is None or isinstance(data, (str, os.PathLike)):
        data = _read(scorer, data, data_dir)
    if not hasattr(data, "x_train"):
        raise UsageError(f"data must be a source (a path or a built-in set's name), a Dataset or a pair (x, y); "
                         f"found {type(data).__name__}" + ("; pass the labels as y=" if hasattr(data, "shape") else ""))
    return _split(data, split)


def _read(scorer: Scorer, source: Any, data_dir: Any) -> Any:
    from . import data as data_mod

    if scorer.model is not None:
        if source is None and not scorer.model.data:
            raise UsageError(f"{scorer.name}: no data given and its spec has no 'data' statement; give DATA")
        return data_mod.load_data(None if source is None else str(source), scorer.model, data_dir=data_dir, batch=1)
    if source is None:
        raise UsageError(f"{scorer.name}: no data given (the model has no spec to name its data); give DATA")
    # Another tool's ONNX file: no spec to check against; the source is read as stored.
    return data_mod.read_source(str(source), SimpleNamespace(path="", data=None), data_dir)


def _split(ds: Any, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    where = ds.name or ds.path or "data"
    has_test = ds.x_test is not None and ds.y_test is not None
    if split == "test" and not has_test:
        raise DataError(f"{ds.path or where}: has no test split; evaluate all of it with split 'train' "
                        f"(--split train), {len(ds.x_train):,} examples")
    if split == "test" or (split == "auto" and has_test):
        return ds.x_test, ds.y_test, f"{where} (test split)"
    return ds.x_train, ds.y_train, f"{where} ({'training split' if has_test else 'all'})"


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
             provider: str = "cpu") -> Report:
    """``dnnspec.evaluate``: the Report of ``model`` on labelled ``data``.

    model: an ``.onnx`` file (or a ``dnnspec.Predictor``), a run folder of ``dnnspec train``,
    a ``.npz`` model or checkpoint, or a ``Net``. data: a source as ``dnnspec train --data``
    takes it (``"fashion-mnist"``, ``"data.npz"``, ``"table.csv:label"``; None: the spec's
    ``data`` statement), a ``dnnspec.data.Dataset``, a pair ``(x, y)``, or ``x`` with ``y=``.
    ``batch``: rows per forward pass (default: :meth:`Scorer.batch`, by the model's layer sizes).
    """
    if batch is not None and int(batch) < 1:
        raise UsageError(f"batch must be at least 1, found {batch}")
    scorer = open_model(model, provider)
    x, labels, where = resolve_data(scorer, data, y, split, data_dir)
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


def evaluate_net(net: Any, x: np.ndarray, y: np.ndarray, data: str = "test split",
                 batch: int | None = None) -> Report:
    """The Report of a Net on checked arrays (the trainer's test split): no data loading, no label checks."""
    scorer = _engine_scorer(net, net.model.name)
    out = scorer.outputs(x, batch, data)
    labels = np.asarray(y).reshape(len(y)) if scorer.task == "classification" else y
    return make_report(out, labels, scorer.task, scorer.class_names, TOP_K, scorer.name, data)


__all__ = ["CONFUSION", "METRICS", "Report", "Scorer", "check_labels", "class_probabilities",
           "classification_metrics", "confusion_matrix", "evaluate", "evaluate_net", "make_report", "open_model",
           "per_class_scores", "regression_metrics", "resolve_data", "top_k_accuracy"]
