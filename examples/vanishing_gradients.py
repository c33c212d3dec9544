"""The lecture's vanishing-gradient story, measured: 20 sigmoid layers with and without batch norm.

    python examples/vanishing_gradients.py [--limit 10000] [--epochs 1]

For both networks it prints the gradient norm of the first and the last dense kernel at
initialisation (one training-mode pass) and the test accuracy after a short training run.
Without batch norm the first layer's gradient is orders of magnitude smaller than the
last one's and the network barely learns; with it, it trains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dnnspec
from dnnspec.data import load_data

SPEC = Path(__file__).resolve().parent.parent / "specs" / "deep_sigmoid_bn.dnn"


def gradient_ratio(net, x, y) -> tuple[float, float]:
    """Norms of d loss / d kernel for the first and last dense layers, one batch."""
    _, grads = net.loss_and_grads(x, y)
    kernels = [k for k in grads if k.endswith(".kernel")]
    return float(np.linalg.norm(grads[kernels[0]])), float(np.linalg.norm(grads[kernels[-1]]))


def run(text: str, label: str, limit: int, epochs: int) -> dict[str, float]:
    net = dnnspec.compile(text)
    data = load_data("fashion-mnist", net.model)
    x, y = data.x_train[:limit], data.y_train[:limit]
    net.set_input_stats(x)
    first, last = gradient_ratio(net, x[:256], y[:256])
    net.fit(x, y, epochs=epochs, progress=False)
    acc = net.evaluate(data.x_test, data.y_test)["accuracy"]
    print(f"{label:<22} |grad| first layer {first:.2e}, last layer {last:.2e}, "
          f"ratio {first / last:.1e}; test accuracy {acc:.3f}")
    return {"first": first, "last": last, "accuracy": acc}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10000, help="training examples to use")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    with_bn = SPEC.read_text()
    without_bn = "\n".join(line for line in with_bn.splitlines() if not line.strip().startswith("batchnorm"))
    return {"batchnorm": run(with_bn, "with batch norm", args.limit, args.epochs),
            "plain": run(without_bn, "without batch norm", args.limit, args.epochs)}


if __name__ == "__main__":
    main()
