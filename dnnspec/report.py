"""Metrics and the evaluation Report, from model outputs and labels: pure NumPy, below the engine.

The model gives probabilities ``P`` (N, K) (one sigmoid column ``p`` becomes ``[1 - p, p]``)
or regression outputs ``O`` (N, T); :func:`dnnspec.evaluate` (dnnspec.evaluation, an ONNX
file or a run folder) and the trainer's test report (:func:`evaluate_net`, a Net) both go
through the functions below, so an exported model and its run folder report the same
numbers. Metrics (scikit-learn's are the reference in ``tests/test_evaluate.py``):

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
* multi-label (``targets T`` with sigmoid and binary_cross_entropy; task ``multilabel`` here):
  probabilities P (N, T), labels Y in {0, 1}; loss = mean over all N*T values of
  -(y log p + (1-y) log(1-p)) (p clipped to [1e-12, 1-1e-12]; the training loss); a label is
  predicted yes when p > 1/2 (logit > 0, as the engine decides). Per label: accuracy
  mean [pred = y], precision, recall, F1 (as per class above) and support = #yes; accuracy
  is their mean (Hamming accuracy), subset_accuracy the fraction of examples with every
  label right; macro average over the labels, micro from the pooled counts.

A module of its own so that the trainer (engine) can report without importing
dnnspec.evaluation, which loads models from disk through the engine (dnnspec.api).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .ir import task_of

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


def multilabel_metrics(out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Loss, accuracy and F1 per label (T,) and overall. out: probabilities (N, T); y: (N, T) in {0, 1}."""
    p = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    t = np.asarray(y, dtype=np.float64).reshape(p.shape)
    q = np.clip(p, PROB_FLOOR, 1.0 - PROB_FLOOR)
    pred, yes = p > 0.5, t > 0.5
    tp = np.sum(pred & yes, axis=0).astype(np.float64)
    fp, fn = np.sum(pred & ~yes, axis=0), np.sum(~pred & yes, axis=0)
    scores = _prf(tp, fp, fn)
    per = {"accuracy": np.mean(pred == yes, axis=0), **scores, "support": yes.sum(axis=0)}
    micro = _prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "loss": float(-np.mean(t * np.log(q) + (1.0 - t) * np.log(1.0 - q))),
        "accuracy": float(np.mean(per["accuracy"])),
        "subset_accuracy": float(np.mean(np.all(pred == yes, axis=1))) if len(p) else 0.0,
        "macro_avg": {m: float(np.mean(scores[m])) for m in ("precision", "recall", "f1")},
        "micro_avg": {m: float(micro[m]) for m in ("precision", "recall", "f1")},
        "per_label": per,
    }


def _prf(tp: Any, fp: Any, fn: Any) -> dict[str, np.ndarray]:
    """Precision, recall, F1 from counts (arrays or scalars); 0 where a denominator is 0."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
                "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
                "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)}


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
        keys = {"classification": ("loss", "accuracy"), "multilabel": ("loss", "accuracy", "subset_accuracy")}
        return {k: self.metrics[k] for k in keys.get(self.task, ("loss", "mae", "rmse", "r2"))}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model, "data": self.data, "examples": self.examples, "task": self.task}
        if self.task == "multilabel":
            d.update({k: self.metrics[k] for k in ("loss", "accuracy", "subset_accuracy", "macro_avg", "micro_avg")})
            d["per_label"] = [{"label": j, **{m: _num(v[j]) for m, v in self.per_target.items()}}
                              for j in range(len(self.per_target["f1"]))]
            return d
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

    def write(self, folder: str | os.PathLike, png: bool = True) -> list[Path]:
        """``folder/metrics.json`` and, for classification with matplotlib and ``png``, ``folder/confusion.png``."""
        from .fileio import atomic_write_text

        folder = Path(folder)
        written = [atomic_write_text(folder / METRICS, json.dumps(self.to_dict(), indent=1) + "\n",
                                     make_parents=True)]
        if self.task == "classification" and png:
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
    """A Report from model outputs and checked labels (``task``: classification, regression or multilabel)."""
    if task == "multilabel":
        m = multilabel_metrics(out, y)
        return Report(task, len(y), {k: v for k, v in m.items() if k != "per_label"},
                      per_target=m["per_label"], model=model, data=data)
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
    if r.task == "multilabel":
        lines.append(f"loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f} (per label, mean)  "
                     f"subset accuracy {m['subset_accuracy']:.4f}  macro F1 {m['macro_avg']['f1']:.4f}  "
                     f"micro F1 {m['micro_avg']['f1']:.4f}")
        pt = r.per_target
        lines += ["", f"{'label':>6}  {'accuracy':>8}  precision  recall  f1-score  support"]
        lines += [f"{j:>6}  {pt['accuracy'][j]:>8.4f}  {pt['precision'][j]:>9.4f}  {pt['recall'][j]:>6.4f}  "
                  f"{pt['f1'][j]:>8.4f}  {int(pt['support'][j]):>7,}" for j in range(len(pt["f1"]))]
        return "\n".join(lines)
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
        """Rows per pass: as many as keep the widest layer's output within ACTIVATION_BUDGET (256..16384),
        and every layer's forward scratch within memory.EVAL_SCRATCH.

        Fewer, larger passes are faster (a 10,000-image MLP pass in one GEMM per layer);
        the budgets keep a conv net's buffers bounded (fashion_resnet: 94 rows, where the
        widest layer alone allowed 640, whose scratch took 1.8 GB).
        """
        if self.model is None:
            return EVAL_BATCH
        from .memory import scratch_rows

        widest = max([math.prod(self.model.input.shape)] + [math.prod(la.out_shape) for la in self.model.layers])
        return int(min(16384, max(256, ACTIVATION_BUDGET // (4 * max(widest, 1))), scratch_rows(self.model)))


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
    return Scorer(name, task_of(task.kind, model.loss.kind), names if task.kind == "classification" else [],
                  outputs, model, width, tuple(model.input.shape))


def evaluate_net(net: Any, x: np.ndarray, y: np.ndarray, data: str = "test split",
                 batch: int | None = None) -> Report:
    """The Report of a Net on checked arrays (the trainer's test split): no data loading, no label checks."""
    scorer = _engine_scorer(net, net.model.name)
    out = scorer.outputs(x, batch, data)
    labels = np.asarray(y).reshape(len(y)) if scorer.task == "classification" else y
    return make_report(out, labels, scorer.task, scorer.class_names, TOP_K, scorer.name, data)


__all__ = ["ACTIVATION_BUDGET", "CONFUSION", "EVAL_BATCH", "METRICS", "PROB_FLOOR", "TOP_K", "Report", "Scorer",
           "class_probabilities", "classification_metrics", "confusion_matrix", "evaluate_net", "make_report",
           "multilabel_metrics", "per_class_scores", "regression_metrics", "render_report", "task_of",
           "top_k_accuracy"]
