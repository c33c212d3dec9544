"""Epoch time of the MLP 784-256-128-10 (ReLU, Adam, batch 128) against JAX, PyTorch and the GEMM bound.

    python bench/bench_mlp.py [--epochs 10] [--limit N] [--random] [--no-torch] [--no-jax]

Trains on the 60,000 Fashion-MNIST training images (uint8, scaled by 1/255 inside the
model; random data of that shape when the set is missing or with --random), no
validation split, in rounds: each round is one dnnspec epoch (``fit``, which goes on
across rounds), then one epoch of each peer that imports (PyTorch; JAX + optax with one
jitted step), all on the same network, data, batch size and (for the peers) batch order,
then the GEMM bound. The machine's speed drifts between minutes, so the per-round ratios,
taken within seconds, are what to compare; their medians are the figures. Before the first
round each side does its one-off work untimed: JAX compiles its step for every batch shape,
dnnspec trains a throwaway net on every batch shape (loading the compiled kernels). Also reported:

* which path dnnspec ran (the fused numba optimizer step and training kernels of the
  ``fast`` extra, or the NumPy passes; $DNNSPEC_FUSED=0 forces NumPy) and what the Adam
  update alone costs on each path;
* epoch 1 vs the last epoch (dead ReLUs make Adam's moments decay towards subnormal
  floats; the engine flushes them, so later epochs must not slow);
* the GEMM bound: every matrix product of one epoch (forward, weight gradients, input
  gradients except the first layer's, which nothing needs), each timed at its exact
  shapes with NumPy in this process, times the number of steps;
* the peak resident memory after dnnspec's first epoch (before the peers load) against
  the size of the data set; the machine (CPU, cores, NumPy, BLAS).
"""

from __future__ import annotations

import argparse
import importlib.util
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
from dnnspec.engine import fused  # noqa: E402
from dnnspec.engine.net import Net  # noqa: E402
from dnnspec.engine.optim import Adam  # noqa: E402
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


class Side:
    """A peer framework's training of the same MLP: ``epoch(order)`` trains one epoch, returns its seconds."""

    name = version = ""

    def epoch(self, order: np.ndarray) -> float:
        raise NotImplementedError


class TorchSide(Side):
    """The same MLP in PyTorch (CPU, its default threads): uint8 batches scaled by 1/255 inside the step,
    nn.Linear's init, Adam lr 1e-3, eager autograd and torch.optim.Adam (its default, foreach)."""

    name = "PyTorch"

    def __init__(self, x: np.ndarray, y: np.ndarray):
        import torch

        self.torch = torch
        torch.manual_seed(0)
        layers = []
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(SIZES) - 2:
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        self.version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"

    def epoch(self, order):
        torch, t = self.torch, time.perf_counter()
        for idx in torch.from_numpy(order).split(BATCH):
            xb = self.x[idx].float().mul_(1 / 255)
            self.opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.net(xb), self.y[idx]).backward()
            self.opt.step()
        return time.perf_counter() - t


class JaxSide(Side):
    """The same MLP in JAX + optax: one jitted step (forward, grad, optax.adam(1e-3) update, apply), params and
    optimizer state donated; uint8 batches gathered with NumPy as the others do, scaled by 1/255 inside the step.
    A warm-up step per batch shape compiles before anything is timed; each epoch ends with block_until_ready."""

    name = "JAX"

    def __init__(self, x: np.ndarray, y: np.ndarray):
        import jax
        import jax.numpy as jnp
        import optax

        keys = jax.random.split(jax.random.PRNGKey(0), len(SIZES) - 1)
        params = []
        for k, (a, b) in zip(keys, zip(SIZES[:-1], SIZES[1:])):
            bound = 1.0 / np.sqrt(a)  # nn.Linear's default, as the PyTorch side
            params.append((jax.random.uniform(k, (a, b), jnp.float32, -bound, bound), jnp.zeros(b, jnp.float32)))
        opt = optax.adam(1e-3)

        def loss_fn(p, xb, yb):
            h = xb.astype(jnp.float32) * (1 / 255)
            for i, (w, b) in enumerate(p):
                h = h @ w + b
                if i < len(p) - 1:
                    h = jax.nn.relu(h)
            return optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()

        def step(p, state, xb, yb):
            loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
            updates, state = opt.update(grads, state, p)
            return optax.apply_updates(p, updates), state, loss

        self.jax, self.step = jax, jax.jit(step, donate_argnums=(0, 1))
        self.params, self.state = params, opt.init(params)
        self.x, self.y = x, y.astype(np.int32)
        for b in sorted({BATCH, len(x) % BATCH} - {0}):  # compile every batch shape of an epoch now
            self.params, self.state, _ = self.step(self.params, self.state, x[:b], self.y[:b])
        jax.block_until_ready(self.params)
        self.version = f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}"

    def epoch(self, order):
        t = time.perf_counter()
        p, state = self.params, self.state
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            p, state, _ = self.step(p, state, self.x[idx], self.y[idx])
        self.jax.block_until_ready(p)
        self.params, self.state = p, state
        return time.perf_counter() - t


def peers(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> list[Side]:
    """The peer sides whose packages import here (none is ever a dependency of dnnspec)."""
    out = []
    for flag, cls, module in ((args.no_torch, TorchSide, "torch"), (args.no_jax, JaxSide, "optax")):
        if flag:
            continue
        try:
            out.append(cls(x, y))
        except ImportError as e:
            print(f"({cls.name} skipped: {e}; pip install {module} to time it)")
    return out


def update_alone(net: Net, steps: int, fused: bool | None) -> float:
    """Seconds per epoch of the Adam update alone (the optimizer's elementwise work), measured here."""
    params = {k: net.params[k].copy() for k in net.trainable}
    opt = Adam(params, lr=1e-3, fused=fused)
    grads = {k: np.full_like(v, 1e-3) for k, v in params.items()}
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
    p.add_argument("--epochs", type=int, default=10, help="rounds: each trains one epoch of every side")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--random", action="store_true", help="random data instead of Fashion-MNIST")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when torch imports")
    p.add_argument("--no-jax", action="store_true", help="skip JAX even when jax and optax import")
    args = p.parse_args()

    x, y, what = load(args.random, args.limit)
    layers = [("dense", {"units": 256}), ("relu", {}), ("dense", {"units": 128}), ("relu", {}),
              ("dense", {"units": 10}), ("softmax", {})]
    model = ir.model_from_layers((784,), layers, optimizer="adam", optimizer_options={"lr": 1e-3},
                                 train={"epochs": args.epochs, "batch": BATCH, "validation": 0.0, "seed": 0},
                                 scale=1 / 255)
    rss: list[float] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]  # before any training
    # Warm-up, as JAX compiles before anything is timed: a throwaway net trains on every batch shape of an
    # epoch once, so the compiled kernels are loaded (from numba's cache) before the timed epochs.
    head = BATCH + len(x) % BATCH  # a full batch and the epoch's short one (if any)
    fit(Net(model), x[:head], y[:head], epochs=1, progress=False)
    net = Net(model)
    orders = np.random.default_rng(1)  # the peers' batch order: one permutation per round, the same for each
    rounds: list[dict[str, float]] = []
    sides: list[Side] = []

    def round_done(epoch: int, row: dict) -> None:
        """After dnnspec's epoch: the peers' epochs and the GEMM bound, within seconds of it."""
        if epoch == 1:  # dnnspec's buffers all exist now; the peers load after this measurement
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            sides.extend(peers(x, y, args))
        r = {"dnnspec": row["seconds"]}
        order = orders.permutation(len(x))
        for side in sides:
            r[side.name] = side.epoch(order)
        r["bound"] = gemm_bound(len(x), BATCH, reps=50)[0]
        rounds.append(r)

    h = fit(net, x, y, progress=False, on_epoch=round_done)
    bound, gflop = gemm_bound(len(x), BATCH)
    print(f"machine: {machine()}")
    print(f"data: {what}, {x.shape[0]} x {x.shape[1]} {x.dtype} ({x.nbytes / 2**20:.0f} MiB); "
          f"MLP 784-256-128-10 ReLU, Adam, batch {BATCH}, {args.epochs} rounds of one epoch per side")
    print(f"dnnspec optimizer step and training kernels: {fused.describe()} (DNNSPEC_FUSED=0: NumPy)")
    for side in sides:
        print(f"{side.name}: {side.version}")
    report(rounds, [s.name for s in sides], gflop)
    secs = h["seconds"]
    print(f"dnnspec epoch 1 vs epoch {len(secs)}: {secs[0]:.3f} s vs {secs[-1]:.3f} s "
          f"(dead ReLUs must not slow later epochs)")
    print(f"final training loss {h['loss'][-1]:.4f}, accuracy {h['accuracy'][-1]:.4f}")
    steps = -(-len(x) // BATCH)
    for which in ((True, False) if importlib.util.find_spec("numba") else (False,)):
        alone = update_alone(net, steps, which)
        print(f"Adam update alone, {'fused' if which else 'NumPy'} step: {alone:.3f} s per epoch "
              f"({alone / bound:.2f}x the GEMM bound by itself)")
    print(f"peak RSS after dnnspec's first epoch {rss[1]:.0f} MiB (before any training {rss[0]:.0f} MiB; "
          f"data {x.nbytes / 2**20:.0f} MiB; growth {rss[1] - rss[0]:.0f} MiB, budget data + 300 MiB)")
    return 0


def report(rounds: list[dict[str, float]], names: list[str], gflop: float) -> None:
    """Per-round seconds and ratios, their medians, and the targets (dnnspec <= JAX, <= 2x the GEMM bound)."""
    cols = ["dnnspec", *names, "bound"]
    ratios = [f"dnnspec/{n}" for n in names] + ["dnnspec/bound"]
    print("round " + " ".join(f"{c:>9}" for c in cols) + "  " + " ".join(f"{c:>15}" for c in ratios))
    per: dict[str, list[float]] = {c: [] for c in cols + ratios}
    for i, r in enumerate(rounds, 1):
        vals = [r[c] for c in cols]
        rs = [r["dnnspec"] / r[n] for n in names] + [r["dnnspec"] / r["bound"]]
        for c, v in zip(cols + ratios, vals + rs):
            per[c].append(v)
        print(f"{i:>5} " + " ".join(f"{v:>9.3f}" for v in vals) + "  " + " ".join(f"{v:>15.2f}" for v in rs))
    med = {c: statistics.median(v) for c, v in per.items()}
    print("  med " + " ".join(f"{med[c]:>9.3f}" for c in cols) + "  " + " ".join(f"{med[c]:>15.2f}" for c in ratios))
    print(f"GEMM bound: {gflop:.1f} GFLOP an epoch at {gflop / med['bound']:.0f} GFLOP/s (median of rounds)")
    if "JAX" in names:
        verdict = "met" if med["dnnspec/JAX"] <= 1.0 else "not met"
        print(f"target dnnspec <= JAX: median per-round ratio {med['dnnspec/JAX']:.2f}, medians "
              f"{med['dnnspec']:.3f} s vs {med['JAX']:.3f} s: {verdict}")
    verdict = "met" if med["dnnspec/bound"] <= 2.0 else "not met"
    print(f"target dnnspec <= 2x the GEMM bound: median per-round ratio {med['dnnspec/bound']:.2f}: {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
