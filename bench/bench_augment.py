"""Cost of on-the-fly augmentation over one Fashion-MNIST-sized epoch.

Augments 60,000 images of 1x28x28 (uint8 raw units, as the trainer hands batches over)
in batches of 128 with two augment blocks: the fashion_cnn one (flip + translate 2px)
and the full set of ops. Reports the median of ``--repeats`` epochs per block, and the
share of a CNN epoch it would add for a given epoch time (``--epoch-s``, default 20 s).

    python bench/bench_augment.py [--n 60000] [--batch 128] [--repeats 3] [--epoch-s 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dnnspec import ir  # noqa: E402
from dnnspec.augment import Augmenter  # noqa: E402
from dnnspec.schema import AUGMENT, Quantity, Range  # noqa: E402


def step(kind: str, *positional, **named) -> ir.Step:
    values, explicit = AUGMENT[kind].bind(list(positional), named)
    return ir.Step(kind, ir.FrozenDict(values), explicit=frozenset(explicit))


BLOCKS = {
    "flip+translate 2px": (step("flip", "horizontal"), step("translate", Quantity(2, "px"))),
    "full set": (step("crop", 2), step("flip", "horizontal"), step("translate", Quantity(2, "px")),
                 step("rotate", Quantity(10, "deg")), step("scale", Range(0.9, 1.1)),
                 step("contrast", Range(0.8, 1.2)), step("brightness", 0.1), step("erase", p=0.5)),
}


def images(n: int, seed: int = 0) -> np.ndarray:
    """Real Fashion-MNIST training images when installed, else random uint8 images."""
    try:
        from dnnspec.data import fashion_mnist
        return fashion_mnist().x_train[:n].reshape(-1, 1, 28, 28)
    except Exception:  # noqa: BLE001 - any failure falls back to synthetic pixels
        return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def epoch_time(aug: Augmenter, x: np.ndarray, batch: int, rng: np.random.Generator) -> float:
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        aug(x[i:i + batch], rng)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epoch-s", type=float, default=20.0, help="CNN epoch time to compare with")
    args = ap.parse_args()
    x = images(args.n)
    rng = np.random.default_rng(0)
    print(f"{len(x)} images {x.shape[1:]} batch {args.batch}, median of {args.repeats} epochs")
    for name, steps in BLOCKS.items():
        aug = Augmenter(steps, (1, 28, 28), (0.0, 255.0))
        times = [epoch_time(aug, x, args.batch, rng) for _ in range(args.repeats)]
        med = statistics.median(times)
        print(f"{name:20s} {med:7.3f} s/epoch  ({1e6 * med / len(x):6.2f} us/image, "
              f"{100 * med / args.epoch_s:5.1f}% of a {args.epoch_s:g} s epoch)")


if __name__ == "__main__":
    main()
