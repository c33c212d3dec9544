"""Epoch time of the MLP 784-256-128-10 (ReLU, Adam, batch 128) against the GEMM bound.

    python bench/bench_mlp.py [--epochs 10] [--limit N] [--random]

Trains on the 60,000 Fashion-MNIST training images (uint8, scaled by 1/255 inside the
model; random data of that shape when the set is missing or with --random), no
validation split, and reports in one run:

* the median epoch time and epoch 1 vs the last epoch (dead ReLUs make Adam's moments
  decay towards subnormal floats; the engine flushes them, so later epochs must not slow);
* the GEMM bound: every matrix product of one epoch (forward, weight gradients, input
  gradients except the first layer's, which nothing needs), each timed at its exact
  shapes with NumPy in this process, times the number of steps; and the ratio to it;
* the peak resident memory against the size of the data set;
* the machine (CPU, cores, NumPy, BLAS).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnnspec import ir  # noqa: E402
from dnnspec.engine.net import Net  # noqa: E402
from dnnspec.engine.trainer import fit  # noqa: E402

SIZES = (784, 256, 128, 10)
BATCH = 128


def load(random: bool, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(x uint8 (N, 784), y (N,), description)."""
    if not random:
        try:
            from dnnspec.data import fashion_mnist

            d = fashion_mnist()
            x = d.x_train.reshape(len(d.x_train), -1)
            return x[:limit], d.y_train[:limit], "Fashion-MNIST train"
        except Exception as e:  # the set is optional for a benchmark
            print(f"(Fashion-MNIST not available: {e}; using random data)")
    rng = np.random.default_rng(0)
    n = limit or 60000
    return rng.integers(0, 256, (n, 784), dtype=np.uint8), rng.integers(0, 10, n), "random uint8"


def matmul_shapes(batch: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(a.shape, b.shape) of every product of one training step."""
    shapes = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        shapes.append(((batch, n_in), (n_in, n_out)))      # forward  x @ W
        shapes.append(((n_in, batch), (batch, n_out)))     # dW = x^T @ dy
        if i > 0:
            shapes.append(((batch, n_out), (n_out, n_in)))  # dx = dy @ W^T
    return shapes


def gemm_bound(n: int, batch: int, reps: int = 200) -> tuple[float, float]:
    """(seconds, GFLOP) of one epoch's matrix products at measured NumPy float32 throughput."""
    rng = np.random.default_rng(1)
    full, last = divmod(n, batch)
    total_s = total_flop = 0.0
    for b, count in ((batch, full), (last, 1 if last else 0)):
        if not count:
            continue
        for sa, sb in matmul_shapes(b):
            a = rng.normal(size=sa).astype(np.float32)
            w = rng.normal(size=sb).astype(np.float32)
            out = np.empty((sa[0], sb[1]), np.float32)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(reps):
                    np.matmul(a, w, out=out)
                times.append((time.perf_counter() - t) / reps)
            total_s += min(times) * count
            total_flop += 2.0 * sa[0] * sa[1] * sb[1] * count
    return total_s, total_flop / 1e9


def torch_epoch(x: np.ndarray, y: np.ndarray, epochs: int = 3) -> tuple[float, str] | None:
    """Median epoch of the same MLP in PyTorch (CPU, this process's threads), or None without torch.

    Same recipe: uint8 batches scaled by 1/255 inside the step, Adam lr 1e-3, batch 128,
    reshuffled each epoch. torch is never a dependency; it is timed only when importable.
    """
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(xt)).split(BATCH):
            xb = xt[idx].float().mul_(1 / 255)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(xb), yt[idx]).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times), f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def adam_floor(net: Net, steps: int) -> float:
    """Seconds per epoch of the Adam update alone (the optimizer's elementwise passes), measured here."""
    from dnnspec.engine.optim import make_optimizer

    opt = make_optimizer(net.model.optimizer, net.params, net.trainable)
    grads = {k: np.full_like(net.params[k], 1e-3) for k in net.trainable}
    params = {k: v.copy() for k, v in net.params.items()}
    for _ in range(5):
        opt.step(params, grads, 1e-3)
    t = time.perf_counter()
    for _ in range(200):
        opt.step(params, grads, 1e-3)
    return (time.perf_counter() - t) / 200 * steps


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = ""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]["name"]
    except Exception:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__} "
            f"({blas}), load average {os.getloadavg()[0]:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--random", action="store_true", help="random data instead of Fashion-MNIST")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison even when torch imports")
    args = p.parse_args()

    x, y, what = load(args.random, args.limit)
    layers = [("dense", {"units": 256}), ("relu", {}), ("dense", {"units": 128}), ("relu", {}),
              ("dense", {"units": 10}), ("softmax", {})]
    model = ir.model_from_layers((784,), layers, optimizer="adam", optimizer_options={"lr": 1e-3},
                                 train={"epochs": args.epochs, "batch": BATCH, "validation": 0.0, "seed": 0},
                                 scale=1 / 255)
    net = Net(model)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h = fit(net, x, y, progress=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bound, gflop = gemm_bound(len(x), BATCH)
    secs = h["seconds"]
    med = statistics.median(secs)
    print(f"machine: {machine()}")
    print(f"data: {what}, {x.shape[0]} x {x.shape[1]} {x.dtype} ({x.nbytes / 2**20:.0f} MiB); "
          f"MLP 784-256-128-10 ReLU, Adam, batch {BATCH}, {args.epochs} epochs")
    print(f"epoch times (s): {' '.join(f'{s:.3f}' for s in secs)}")
    print(f"median epoch: {med:.3f} s; GEMM bound {bound:.3f} s ({gflop:.1f} GFLOP at {gflop / bound:.0f} GFLOP/s); "
          f"ratio {med / bound:.2f}x (target <= 1.6x)")
    print(f"epoch 1 vs epoch {len(secs)}: {secs[0]:.3f} s vs {secs[-1]:.3f} s (ratio {secs[-1] / secs[0]:.2f})")
    print(f"final training loss {h['loss'][-1]:.4f}, accuracy {h['accuracy'][-1]:.4f}")
    steps = -(-len(x) // BATCH)
    floor = adam_floor(net, steps)
    print(f"Adam update alone: {floor:.3f} s per epoch ({floor / bound:.2f}x the GEMM bound by itself)")
    ref = None if args.no_torch else torch_epoch(x, y)
    if ref is not None:
        print(f"PyTorch ({ref[1]}): median epoch {ref[0]:.3f} s, {ref[0] / bound:.2f}x the GEMM bound; "
              f"dnnspec / PyTorch = {med / ref[0]:.2f}")
    print(f"peak RSS {rss:.0f} MiB (before training {rss0:.0f} MiB; data {x.nbytes / 2**20:.0f} MiB; "
          f"growth {rss - rss0:.0f} MiB, budget data + 300 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
