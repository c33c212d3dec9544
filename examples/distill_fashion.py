"""Knowledge distillation on Fashion-MNIST: a small MLP student with and without a CNN teacher.

    python examples/distill_fashion.py [--teacher-limit 60000] [--teacher-epochs 3] [--limit 3000]
                                       [--epochs 30] [--temperature 4] [--weight 0.9] [--seeds 1 2 3]
                                       [--teacher TEACHER.onnx] [--work DIR]

1. The teacher: ``specs/fashion_cnn.dnn`` trained for ``--teacher-epochs`` on the first
   ``--teacher-limit`` training images (seed 7), exported with ``--logits`` (skipped when
   ``--teacher`` names an exported model).
2. The student (784-64-10, ReLU, Adam, no validation split, fixed epochs) trained on the
   first ``--limit`` training images, once on the labels alone and once distilled from the
   teacher, with the same seed: same initial weights, same batches.
3. Test accuracy on the 10,000 test images for both, per seed, and their means.

The same with the CLI: ``dnnspec export runs/fashion_cnn --logits -o teacher.onnx`` then
``dnnspec train STUDENT.dnn --limit 3000 --teacher teacher.onnx --temperature 4 --distill-weight 0.9``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import dnnspec
from dnnspec.data import load_data
from dnnspec.engine.distill import Distiller
from dnnspec.export.onnx_export import export

TEACHER_SPEC = Path(__file__).resolve().parent.parent / "specs" / "fashion_cnn.dnn"
STUDENT = """network fashion_student
input     image[1, 28, 28] scale=1/255
normalize auto
classes   10
layers {
  flatten
  dense 64
  relu
  dense 10
  softmax
}
loss      cross_entropy
optimizer adam lr=1e-3
train     epochs=30 batch=64 validation=0 seed=1
"""


def train_teacher(limit: int, epochs: int, work: Path) -> Path:
    """Train the CNN teacher on the first ``limit`` images and export it with its logits."""
    net = dnnspec.compile(TEACHER_SPEC)
    data = load_data("fashion-mnist", net.model)
    t0 = time.perf_counter()
    net.fit(data.x_train[:limit], data.y_train[:limit], epochs=epochs, progress=False)
    acc = net.evaluate(data.x_test, data.y_test)["accuracy"]
    print(f"teacher fashion_cnn: {limit} images, {epochs} epochs, {time.perf_counter() - t0:.0f} s, "
          f"test accuracy {acc:.4f}")
    return export(net, work / "teacher.onnx", logits_output=True)


def train_student(x, y, data, seed: int, epochs: int, teacher: Distiller | None) -> tuple[float, float]:
    """(test accuracy, seconds) of the student trained with ``seed`` on (x, y), distilled when ``teacher``."""
    net = dnnspec.compile(STUDENT, seed=seed)
    t0 = time.perf_counter()
    net.fit(x, y, epochs=epochs, seed=seed, progress=False, teacher=teacher)
    return net.evaluate(data.x_test, data.y_test)["accuracy"], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="an exported teacher (with --logits); default: train one")
    parser.add_argument("--teacher-limit", type=int, default=60000)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=3000, help="training images for the student")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--weight", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work", help="folder for teacher.onnx (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = Path(args.teacher) if args.teacher else train_teacher(args.teacher_limit, args.teacher_epochs, work)
        distiller = Distiller(path, temperature=args.temperature, weight=args.weight)
        data = load_data("fashion-mnist", dnnspec.compile(STUDENT).model)
        x, y = data.x_train[:args.limit], data.y_train[:args.limit]
        out: dict[str, list[float]] = {"labels": [], "distilled": []}
        for seed in args.seeds:
            plain, s0 = train_student(x, y, data, seed, args.epochs, None)
            taught, s1 = train_student(x, y, data, seed, args.epochs, distiller)
            out["labels"].append(plain)
            out["distilled"].append(taught)
            print(f"student seed {seed}: labels alone {plain:.4f} ({s0:.0f} s), distilled {taught:.4f} ({s1:.0f} s, "
                  f"T {args.temperature:g}, A {args.weight:g}), {args.limit} images, {args.epochs} epochs")
        print(f"mean over seeds {args.seeds}: labels alone {np.mean(out['labels']):.4f}, "
              f"distilled {np.mean(out['distilled']):.4f}")
    return out


if __name__ == "__main__":
    main()
