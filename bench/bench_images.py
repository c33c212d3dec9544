"""Speed of reading an image folder: 10,000 small images in 10 class folders, decoded and cached.

Writes ``--n`` images (default 10,000) of ``--size`` x ``--size`` RGB pixels (default 32,
CIFAR-sized), half PNG and half JPEG, into a temporary folder of 10 class folders, then
times :func:`dnnspec.data.load_data` on it (decoding to uint8 ``(N, 3, H, W)`` and the
checks against a spec), as images per second:

* cold, decoded in parallel (one thread per core: Pillow releases the GIL while it
  decodes) and written to the cache;
* cold with one decoding thread, for the parallel speed-up;
* from the cache (a digest of every file's path, size and mtime, then one ``.npz`` read);
* cold with ``resize=crop`` from images twice the size (``--size`` * 2), the resizing path.

Each number is the median of ``--rounds`` runs (default 3), with a fresh cache folder for
each cold run.

    python bench/bench_images.py [--n 10000] [--size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnnspec import frontend, images  # noqa: E402
from dnnspec.data import load_data  # noqa: E402

CLASSES = 10


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` images in ``CLASSES`` class folders, PNG for even indices and JPEG for odd ones."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(CLASSES):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)  # noisy pictures: PNG cannot cheat
    for i in range(n):
        img = Image.fromarray(base[i % 64] ^ np.uint8(i % 251))
        img.save(root / f"class{i % CLASSES}" / f"{i:05d}.{'png' if i % 2 == 0 else 'jpg'}")


def spec(root: Path, size: int, resize: str = "") -> object:
    option = f" resize={resize}" if resize else ""
    return frontend.parse(f'data "{root}"{option}\ninput image[3, {size}, {size}] scale=1/255\nclasses {CLASSES}\n'
                          f"layers {{\n flatten\n dense {CLASSES}\n softmax\n}}\n")


def timed_load(model: object, cache: Path | None, workers: int | None = None) -> float:
    """Seconds of one load_data, with the cache folder ``cache`` (None: no cache) and ``workers`` threads."""
    os.environ["DNNSPEC_CACHE"] = str(cache) if cache is not None else "off"
    real = images.decode_all

    def decode(*args, **kwargs):
        return real(*args, **{**kwargs, "workers": workers}, progress=False)

    images.decode_all = decode
    try:
        t0 = time.perf_counter()
        data = load_data(None, model, batch=1)
        seconds = time.perf_counter() - t0
    finally:
        images.decode_all = real
    assert data.x_train.dtype == np.uint8
    return seconds


def median_rate(n: int, runs: list[float]) -> str:
    s = statistics.median(runs)
    return f"{n / s:>10,.0f} images/s  ({s:.2f} s; runs {', '.join(f'{r:.2f}' for r in runs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_folder(tmp / "small", args.n, args.size)
        write_folder(tmp / "large", args.n, 2 * args.size, seed=1)
        print(f"wrote 2 x {args.n:,} images ({args.size}px and {2 * args.size}px, half PNG, half JPEG) in "
              f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores")
        model = spec(tmp / "small", args.size)
        cold = [timed_load(model, tmp / f"cache{r}") for r in range(args.rounds)]
        one = [timed_load(model, None, workers=1) for _ in range(args.rounds)]
        cached = [timed_load(model, tmp / "cache0") for _ in range(args.rounds)]
        crop = [timed_load(spec(tmp / "large", args.size, "crop"), tmp / f"crop{r}") for r in range(args.rounds)]
    print(f"cold, parallel, writing the cache: {median_rate(args.n, cold)}")
    print(f"cold, one thread, no cache:        {median_rate(args.n, one)}")
    print(f"from the cache:                    {median_rate(args.n, cached)}")
    print(f"cold, {2 * args.size}px -> {args.size}px resize=crop:  {median_rate(args.n, crop)}")


if __name__ == "__main__":
    main()
