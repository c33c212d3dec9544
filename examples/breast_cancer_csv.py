"""A real table end to end: scikit-learn's breast cancer data as a CSV with text labels -> dnnspec.

    python examples/breast_cancer_csv.py [--out DIR]

Writes the 569 tumours of ``sklearn.datasets.load_breast_cancer`` as people keep such a
table: a header row, the label first as text (``diagnosis``: ``malignant`` or ``benign``),
the 30 measurements, and one text column (``radius_band``: ``small``, ``medium`` or
``large``, the terciles of the training rows' mean radius) to show one-hot encoding.
80 % of the rows (stratified, seeded) go to ``train.csv``, the rest to ``test.csv``. Then it
runs, and prints, the commands a user would type:

    dnnspec check breast_cancer.dnn --data       # what the data has: label column, features, classes
    dnnspec train breast_cancer.dnn --out run    # 33 features: 30 numbers + 3 one-hot
    dnnspec export run                           # the ONNX model takes the raw columns
    dnnspec predict run/model.onnx test.csv --limit 5   # the raw table; its label column is dropped
    dnnspec evaluate run/model.onnx test.csv     # accuracy, per class, confusion matrix

and checks the ONNX numbers against the run folder's (the NumPy engine) and scikit-learn's.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SPEC = """# scikit-learn's breast cancer table, read from a CSV with text labels and a text column
network breast_cancer

data      "train.csv" label=diagnosis     # the label is the first column, by name
input     [33]                            # 30 measurements + radius_band one-hot (3)
classes   2                               # names from the data: benign, malignant
normalize auto

layers {
  dense   32 init=he_normal
  relu
  dropout 0.2
  dense   2
  softmax
}

loss      cross_entropy
optimizer adam lr=1e-3
train     epochs=80 batch=32 validation=0.15 seed=0 early_stop=10
"""


def write_tables(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """train.csv and test.csv: diagnosis (text), 30 numbers, radius_band (text)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    names = [n.replace(" ", "_") for n in d.feature_names]
    labels = np.array(d.target_names)[d.target]  # 0 malignant, 1 benign
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for k in np.unique(d.target):  # stratified 20 % test split
        rows = rng.permutation(np.flatnonzero(d.target == k))
        test[rows[: round(0.2 * len(rows))]] = True
    radius = d.data[:, 0]
    cuts = np.quantile(radius[~test], [1 / 3, 2 / 3])
    band = np.array(["small", "medium", "large"])[np.searchsorted(cuts, radius)]
    paths = []
    for name, rows in (("train.csv", ~test), ("test.csv", test)):
        path = out / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["diagnosis", *names, "radius_band"])
            for i in np.flatnonzero(rows):
                w.writerow([labels[i], *(f"{v:.6g}" for v in d.data[i]), band[i]])
        paths.append(path)
    return paths[0], paths[1]


def run(*args: str, cwd: Path, quiet: bool = False) -> str:
    """Run one dnnspec command as a user types it in ``cwd``; print it and its output; return its stdout."""
    print(f"\n$ dnnspec {' '.join(shlex.quote(a) for a in args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "dnnspec", *args], cwd=cwd, capture_output=True, text=True)
    if not quiet:
        print(done.stdout + done.stderr, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"dnnspec {args[0]} failed with status {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the tables, spec, run and model (default: temp)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="dnnspec-breast-cancer-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = write_tables(out)
    spec = out / "breast_cancer.dnn"
    spec.write_text(SPEC)
    print(f"wrote {train_csv}, {test_csv} and {spec}")
    run("check", "breast_cancer.dnn", "--data", cwd=out)  # the commands are typed in the output folder
    run("train", "breast_cancer.dnn", "--out", "run", "--progress", "none", "--overwrite", cwd=out)
    run("export", "run", cwd=out)
    run("predict", "run/model.onnx", "test.csv", "--limit", "5", cwd=out)
    run("evaluate", "run/model.onnx", "test.csv", cwd=out)
    by_onnx = json.loads(run("evaluate", "run/model.onnx", "test.csv", "--json", cwd=out, quiet=True))
    by_engine = json.loads(run("evaluate", "run", "test.csv", "--json", cwd=out, quiet=True))
    result = {"accuracy": by_onnx["accuracy"], "engine_accuracy": by_engine["accuracy"],
              "sklearn_accuracy": _sklearn_accuracy(out / "run" / "model.onnx", test_csv)}
    print(f"\ntest accuracy {result['accuracy']:.4f} through the ONNX file, {result['engine_accuracy']:.4f} through "
          f"the run folder, {result['sklearn_accuracy']:.4f} by scikit-learn on onnxruntime's outputs")
    return result


def _sklearn_accuracy(model: Path, table: Path) -> float:
    """The reference: the CSV read with the csv module, fed to onnxruntime column by column, scored by sklearn."""
    import onnxruntime as ort
    from sklearn.metrics import accuracy_score

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        values = [r[i.name] for r in rows]
        feeds[i.name] = (np.array(values, dtype=object) if i.type == "tensor(string)"
                         else np.array(values, dtype=np.float32)).reshape(-1, 1)
    probs = sess.run(["probabilities"], feeds)[0]
    names = json.loads(sess.get_modelmeta().custom_metadata_map["class_names"])
    truth = [names.index(r["diagnosis"]) for r in rows]
    return float(accuracy_score(truth, probs.argmax(1)))


if __name__ == "__main__":
    main()
