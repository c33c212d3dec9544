"""End to end with the Python API: spec text -> trained NumPy net -> ONNX -> onnxruntime.

    python examples/quickstart.py [--out DIR]

Trains the spiral classifier of specs/spirals.dnn (a few seconds on two cores), exports
it, and checks that onnxruntime gives the engine's probabilities.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import dnnspec
from dnnspec.data import load_data
from dnnspec.export.onnx_export import export

SPEC = Path(__file__).resolve().parent.parent / "specs" / "spirals.dnn"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the run and model.onnx (default: a temp folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="dnnspec-quickstart-"))

    net = dnnspec.compile(SPEC)                      # parse, check, build the IR, initialise
    data = load_data(net.model.data, net.model)      # the spec's `data spirals`
    net.fit(data.x_train, data.y_train, run_dir=out / "run", progress=False)
    test = net.evaluate(data.x_test, data.y_test)
    print(f"engine test accuracy {test['accuracy']:.4f}")

    path = export(net, out / "model.onnx")
    predictor = dnnspec.Predictor(path)
    probs = predictor.predict(data.x_test.astype(np.float32))
    gap = float(np.abs(probs - net.forward(data.x_test)).max())
    onnx_acc = float((probs.argmax(1) == data.y_test).mean())
    print(f"onnxruntime test accuracy {onnx_acc:.4f}, max |onnx - engine| = {gap:.2e}, model at {path}")
    return {"accuracy": test["accuracy"], "onnx_accuracy": onnx_acc, "max_gap": gap}


if __name__ == "__main__":
    main()
