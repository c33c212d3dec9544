"""Speed of evaluation on the 10,000 Fashion-MNIST test images, for a small MLP.

Trains a 784-128-10 MLP (ReLU, Adam, batch 128) for one epoch on the 60,000 training
images (the weights only need to be real enough for a meaningful report), writes its run
folder and ONNX file, then times (medians of several calls, all in this one run):

* ``dnnspec.evaluate(run_dir, (x, y))``: the NumPy engine's forward pass and the metrics,
* ``dnnspec.evaluate(model.onnx, (x, y))``: onnxruntime's and the metrics,
* the metrics alone on the (10000, 10) probabilities, next to scikit-learn computing the
  same numbers (accuracy, log loss, top-3 and top-5, per-class precision/recall/F1/support
  with macro and weighted averages, confusion matrix) on the same arrays,
* ``dnnspec evaluate model.onnx fashion-mnist --json`` as a command (a fresh process:
  interpreter start, imports, reading the IDX files, the report).

    python bench/bench_evaluate.py [--calls 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timing import time_calls  # noqa: E402  (bench/timing.py)

import dnnspec  # noqa: E402
from dnnspec.evaluation import classification_metrics  # noqa: E402

SPEC = """network bench_eval_mlp
data fashion-mnist
input image[1, 28, 28] scale=1/255
classes "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
layers {
  flatten
  dense 128
  relu
  dense 10
  softmax
}
optimizer adam lr=1e-3
train epochs=1 batch=128 validation=0 seed=0
"""


def sklearn_metrics(p: np.ndarray, y: np.ndarray) -> dict:
    """The same numbers through scikit-learn's functions (the reference implementation)."""
    from sklearn import metrics as sk

    labels = list(range(p.shape[1]))
    p = p / p.sum(axis=1, keepdims=True)  # sklearn warns about float32 rounding otherwise
    pred = p.argmax(1)
    out = {"accuracy": sk.accuracy_score(y, pred), "loss": sk.log_loss(y, p, labels=labels),
           "top3": sk.top_k_accuracy_score(y, p, k=3, labels=labels),
           "top5": sk.top_k_accuracy_score(y, p, k=5, labels=labels),
           "per_class": sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0),
           "confusion": sk.confusion_matrix(y, pred, labels=labels)}
    for avg in ("macro", "weighted"):
        out[avg] = sk.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
    return out


def median_ms(fn, calls: int) -> float:
    return 1000 * statistics.median(time_calls(fn, calls, warmup=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5, help="timed calls per measurement (default 5)")
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="dnnspec-bench-eval-"))
    (tmp / "mlp.dnn").write_text(SPEC)

    t0 = time.perf_counter()
    net = dnnspec.compile(tmp / "mlp.dnn")
    data = dnnspec.load_data(None, net.model, data_dir=args.data_dir)
    load_s = time.perf_counter() - t0
    x, y = data.x_test, data.y_test
    t0 = time.perf_counter()
    net.fit(data.x_train, data.y_train, run_dir=tmp / "run", progress=False, out=io.StringIO())
    train_s = time.perf_counter() - t0
    onnx_path = dnnspec.export(tmp / "run")

    engine = dnnspec.evaluate(tmp / "run", (x, y))
    onnx = dnnspec.evaluate(onnx_path, (x, y))
    assert engine["accuracy"] == onnx["accuracy"] and np.array_equal(engine.confusion, onnx.confusion)
    probs = dnnspec.Predictor(onnx_path).predict(x).astype(np.float64)

    rows = [
        ("evaluate(run folder): engine forward + metrics", median_ms(lambda: dnnspec.evaluate(tmp / "run", (x, y)),
                                                                     args.calls)),
        ("evaluate(model.onnx): onnxruntime + metrics", median_ms(lambda: dnnspec.evaluate(onnx_path, (x, y)),
                                                                  args.calls)),
        ("metrics alone (dnnspec.evaluation, NumPy)", median_ms(lambda: classification_metrics(probs, y), args.calls)),
        ("the same metrics with scikit-learn", median_ms(lambda: sklearn_metrics(probs, y), args.calls)),
    ]
    cmd = [sys.executable, "-m", "dnnspec", "evaluate", str(onnx_path), "fashion-mnist", "--json"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]

    def command() -> None:
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)

    process_ms = median_ms(command, max(args.calls // 2, 2))
    rows.append(("`dnnspec evaluate model.onnx fashion-mnist --json` (process)", process_ms))

    print(f"Fashion-MNIST test split: {len(x):,} images; data read in {load_s:.2f} s (60,000 + 10,000 images), "
          f"1 training epoch {train_s:.1f} s; test accuracy {engine['accuracy']:.4f} (engine) = "
          f"{onnx['accuracy']:.4f} (onnxruntime), loss {engine['loss']:.5f} / {onnx['loss']:.5f}")
    width = max(len(r[0]) for r in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.1f} ms  {len(x) / ms * 1000:>10,.0f} images/s")


if __name__ == "__main__":
    main()
