"""``dnnspec evaluate MODEL [DATA]``: how good a model is on labelled data.

MODEL is an ``.onnx`` file (run with onnxruntime) or a run folder / ``.npz`` model (run with
the NumPy engine, ``dnnspec.load``). DATA is what ``dnnspec train --data`` takes (its test
split when it has one; default: the spec's ``data`` statement), or with ``--labels FILE``
an inputs file as ``dnnspec predict`` takes it. Prints loss, accuracy, top-k, a per-class
table and the confusion matrix (or MAE, RMSE, R^2), or with ``--json`` the report as JSON;
``--out DIR`` writes ``metrics.json`` and ``confusion.png``. See dnnspec/evaluation.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from ..errors import UsageError
from . import positive_int


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, found {text!r}")
    return ks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="an .onnx file, or a run folder / .npz model of 'dnnspec train'")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="labelled data as 'dnnspec train --data' takes it (default: the spec's data statement); "
                        "with --labels, an inputs file as 'dnnspec predict' takes it")
    p.add_argument("--labels", metavar="FILE", help="labels for an inputs file DATA (.npy, .npz, .csv, IDX)")
    p.add_argument("--label", metavar="NAME",
                   help="a CSV table's label column (default: the one the model was trained with, else the last)")
    p.add_argument("--split", choices=("auto", "test", "train"), default="auto",
                   help="which split of DATA (default auto: the test split when there is one, else all of it)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with downloaded data sets (e.g. Fashion-MNIST)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", metavar="DIR", help="also write DIR/metrics.json and DIR/confusion.png")
    p.add_argument("--top-k", type=_ks, default=(3, 5), metavar="K[,K]",
                   help="top-k accuracies to report (default 3,5; those below the number of classes)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="examples per forward pass (default: as many as keep the widest layer within 64 MiB)")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime provider for .onnx")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, open_model

    scorer = open_model(args.model, provider=args.provider)
    data, y = args.data, None
    if args.labels is not None:
        data, y = _inputs_and_labels(scorer, args.data, args.labels)
    report = evaluate(scorer, data, y, split=args.split, batch=args.batch, top_k=args.top_k, data_dir=args.data_dir,
                      label=args.label)
    if args.labels is not None:
        report.data = f"{args.data} with labels {args.labels}"
    written = report.write(args.out) if args.out else []
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    width = shutil.get_terminal_size((100, 24)).columns - 1 if sys.stdout.isatty() else None
    print(report.render(width))
    if written:
        print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _inputs_and_labels(scorer, data: str | None, labels: str):
    """(x, y) read with predict's readers: DATA an inputs file, --labels its labels (one per example)."""
    import numpy as np

    from ..export.predictor import load_inputs

    if data is None:
        raise UsageError("--labels FILE goes with an inputs file DATA: dnnspec evaluate MODEL INPUTS --labels FILE")
    x = load_inputs(data, scorer.input_shape)
    y = np.asarray(load_inputs(labels, ()))
    return x, (y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y)
