"""Epoch time with and without a busy neighbour: the thread governor against fixed thread counts and PyTorch.

    python bench/bench_busy.py [--rounds 3] [--nets mlp,cnn] [--mlp-images 60000] [--cnn-images 16384]
                               [--cap 30] [--no-blas] [--no-torch]
    python bench/bench_busy.py --quiet-ab 10     # the MLP, quiet: today's path against auto, one process

Networks: ``specs/fashion_mlp.dnn`` (784-256-256-10, batch norm, ELU, dropout) and
``specs/fashion_cnn.dnn`` (two conv/batch-norm/pool blocks, dense 128), Adam, batch 128,
on Fashion-MNIST training images (random uint8 of that shape when the set is missing).
An "epoch" is one shuffled pass over the first N images, timed as the trainer runs it
(gather, ``loss_and_grads``, optimizer step, inside ``net.threads()``), with no validation.

Two conditions, alternated in rounds:

* **quiet**: nothing of ours beside the run (other users' load is reported as ``loadavg``);
* **busy**: a neighbour process spins on one core for the whole condition (bounded: it
  exits by itself after its time limit and is killed by pid when the condition ends).

In each, one epoch of every configuration, in a rotating order:

* ``fixed N``: ``$DNNSPEC_THREADS=N`` for each count N the governor may choose (1, 2, ... budget);
* ``auto``: no ``$DNNSPEC_THREADS``, the governor starting afresh every epoch (its cold start
  is inside the timing); the share of steps it ran at each count is printed beside it;
* ``blas N`` (MLP, unless --no-blas): the MLP's path before the BLAS governor: OpenBLAS
  threading the GEMMs itself with N threads whatever the load (for an MLP, ``fixed N`` and
  ``auto`` set BLAS's thread count: ``threads.blas_threads``);
* ``torch N`` (unless --no-torch, when torch imports): the same network in PyTorch with N
  threads, in a child process (its OpenMP threads must not spin beside ours).

An epoch running longer than ``--cap`` seconds is stopped and extrapolated (marked ``~``).
Figures per round and net: ``auto / best fixed`` (the goal: <= 1.25 busy) and, for the
MLP, quiet, ``auto / today`` (today: ``blas 2``, the MLP's path before this change; the
goal: <= 1.03). The CNN's earlier path (a sleeping thread pool) has no twin in this
process; docs/engine.md ("Threads") gives an A/B against it. The machine drifts between
seconds, so the ratios within a round are what to compare; their medians are the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECS = {"mlp": ROOT / "specs/fashion_mlp.dnn", "cnn": ROOT / "specs/fashion_cnn.dnn"}
FASHION = Path("/usr/share/datasets/fashion-mnist")
BATCH = 128
NEIGHBOUR = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def load(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(x uint8 (n, 1, 28, 28), y (n,), description): Fashion-MNIST training images, or random ones."""
    images, labels = FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        from dnnspec.data import read_idx

        return read_idx(images)[:n].reshape(-1, 1, 28, 28), read_idx(labels)[:n], "Fashion-MNIST train"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n), "random uint8"


# --- one epoch of the engine -------------------------------------------------------------------


def before_governor(net_class: type) -> type:
    """The MLP's path before the BLAS governor: a Net whose passes leave BLAS's threads as they are
    (OpenBLAS's own count, or the caller's threadpool limit), whatever the load."""
    return type("BlasNet", (net_class,), {"own_threads": False, "threads": lambda self: contextlib.nullcontext()})


def engine_epoch(net_name: str, x: np.ndarray, y: np.ndarray, config: str, cap: float) -> tuple[float, str]:
    """Seconds of one epoch in ``config`` ("fixed N", "auto", "blas N"), and a note (the governor's share)."""
    from threadpoolctl import threadpool_limits

    import dnnspec
    from dnnspec.engine import threads
    from dnnspec.engine.net import Net
    from dnnspec.engine.optim import Adam

    kind, _, count = config.partition(" ")
    os.environ.pop(threads.ENV, None)
    if kind == "fixed":
        os.environ[threads.ENV] = count
    threads.reset()
    net = dnnspec.compile(SPECS[net_name], seed=0)
    if kind == "blas":
        net = before_governor(Net)(net.model, seed=0)
    opt = Adam(net.params, net.trainable, lr=1e-3)
    limit = threadpool_limits(int(count), "blas") if kind == "blas" else None
    try:
        seconds = _timed_epoch(net, opt, x, y, cap)
    finally:
        if limit is not None:
            limit.restore_original_limits()
        os.environ.pop(threads.ENV, None)
    gov = threads._governor if net._threads else threads._blas_governor
    note = ""
    if kind == "auto" and gov is not None and sum(gov.steps.values()):
        total = sum(gov.steps.values())
        note = " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in gov.steps.items())
    return seconds, note


def _timed_epoch(net, opt, x, y, cap: float) -> float:
    """One shuffled pass in batches as the trainer runs it; stopped after ``cap`` s and extrapolated (negative)."""
    order = np.random.default_rng(1).permutation(len(x))
    steps = -(-len(x) // BATCH)
    xb, yb = np.empty((BATCH, *x.shape[1:]), x.dtype), np.empty(BATCH, y.dtype)
    t0 = time.perf_counter()
    with net.threads():
        for i in range(steps):
            rows = order[i * BATCH:(i + 1) * BATCH]
            k = len(rows)
            np.take(x, rows, axis=0, out=xb[:k])
            np.take(y, rows, axis=0, out=yb[:k])
            _, grads = net.loss_and_grads(xb[:k], yb[:k])
            opt.step(net.params, grads)
            spent = time.perf_counter() - t0
            if spent > cap and i + 1 < steps:
                return -spent * steps / (i + 1)
    return time.perf_counter() - t0


# --- one epoch of PyTorch, in a child process ----------------------------------------------------


def torch_model(net_name: str):
    from torch import nn

    if net_name == "mlp":
        def block(n_in: int) -> list:
            return [nn.Linear(n_in, 256), nn.BatchNorm1d(256, momentum=0.01), nn.ELU(), nn.Dropout(0.1)]

        return nn.Sequential(nn.Flatten(), *block(784), *block(256), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))


def torch_worker(net_name: str, n: int, count: int, cap: float) -> None:
    """Child process: print one JSON line {"seconds": s} for one PyTorch epoch with ``count`` threads."""
    import torch

    torch.set_num_threads(count)
    torch.manual_seed(0)
    x, y, _ = load(n)
    model = torch_model(net_name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(x)))
    steps = -(-len(x) // BATCH)

    def step(i: int) -> None:
        rows = order[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xt[rows]), yt[rows]).backward()
        opt.step()

    for i in range(3):  # warm-up: first calls allocate and pick kernels
        step(i)
    t0, seconds = time.perf_counter(), None
    for i in range(steps):
        step(i)
        spent = time.perf_counter() - t0
        if spent > cap and i + 1 < steps:
            seconds = -spent * steps / (i + 1)
            break
    print(json.dumps({"seconds": seconds if seconds is not None else time.perf_counter() - t0,
                      "version": torch.__version__}))


def torch_epoch(net_name: str, n: int, count: int, cap: float) -> tuple[float | None, str]:
    cmd = [sys.executable, __file__, "--torch-worker", net_name, "--images", str(n), "--threads", str(count),
           "--cap", str(cap)]
    env = dict(os.environ, OMP_NUM_THREADS=str(count))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap * 3 + 120, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds"], ""
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, KeyError) as e:
        return None, f"failed: {type(e).__name__}"


def torch_available() -> bool:
    out = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, timeout=120)
    return out.returncode == 0


# --- the neighbour -------------------------------------------------------------------------------


class Neighbour:
    """A process spinning on one core for at most ``limit`` seconds; stopped by pid on exit."""

    def __init__(self, limit: float):
        self.limit = limit
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Neighbour:
        self.proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(self.limit)])
        time.sleep(0.3)  # let it reach its loop
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


# --- the rounds ----------------------------------------------------------------------------------


def configs(net_name: str, levels: list[int], blas: bool, torch_ok: bool) -> list[str]:
    out = [f"fixed {k}" for k in levels] + ["auto"]
    if blas and net_name == "mlp":
        out += [f"blas {k}" for k in levels]
    if torch_ok:
        out += [f"torch {k}" for k in levels]
    return out


def run_condition(net_name: str, x, y, names: list[str], shift: int, cap: float) -> dict[str, tuple[float, str]]:
    """One epoch of every configuration, starting at ``shift`` in the list (rotating the order between rounds)."""
    out = {}
    for name in names[shift % len(names):] + names[:shift % len(names)]:
        time.sleep(0.3)  # OpenBLAS's workers spin for a while after a "blas 2" epoch: let them rest
        if name.startswith("torch"):
            out[name] = torch_epoch(net_name, len(x), int(name.split()[1]), cap)
        else:
            out[name] = engine_epoch(net_name, x, y, name, cap)
    return out


def show(t: float | None) -> str:
    if t is None:
        return "   -   "
    return f"{'~' if t < 0 else ' '}{abs(t):6.2f}"


def summary(net_name: str, levels: list[int], rows: list[dict]) -> None:
    """Per-round ratios and their medians: auto / best fixed (both conditions), auto / today (quiet)."""
    today = "blas 2"  # the MLP's path before this change; the CNN's has no in-process twin
    for cond in ("quiet", "busy"):
        best = [min(abs(r[cond][f"fixed {k}"][0]) for k in levels) for r in rows]
        auto = [abs(r[cond]["auto"][0]) for r in rows]
        ratios = [a / b for a, b in zip(auto, best)]
        line = (f"  {net_name} {cond:5s} auto / best fixed: median {statistics.median(ratios):.3f} "
                f"[{' '.join(f'{v:.3f}' for v in ratios)}]")
        if cond == "quiet" and today in rows[0][cond]:
            vs = [a / abs(r[cond][today][0]) for a, r in zip(auto, rows)]
            line += f"; auto / today ({today}): median {statistics.median(vs):.3f} [{' '.join(f'{v:.3f}' for v in vs)}]"
        print(line)


def quiet_ab(x: np.ndarray, y: np.ndarray, rounds: int) -> None:
    """The MLP on a quiet machine: "blas 2" (BLAS's own threads, no governor: the path before the BLAS
    governor) against "auto" (``blas_threads`` and its governor), one net each, alternating epochs in one
    process (the order flips every round), so that both see the same minutes of the machine."""
    import dnnspec
    from dnnspec.engine import threads
    from dnnspec.engine.net import Net
    from dnnspec.engine.optim import Adam

    os.environ.pop(threads.ENV, None)
    threads.reset()
    model = dnnspec.compile(SPECS["mlp"], seed=0).model
    today = before_governor(Net)
    nets = {"today": today(model, seed=0), "auto": Net(model, seed=0)}
    opts = {k: Adam(n.params, n.trainable, lr=1e-3) for k, n in nets.items()}
    for k in nets:  # warm-up: numba, buffers
        _timed_epoch(nets[k], opts[k], x[:BATCH * 8], y[:BATCH * 8], 1e9)
    times: dict[str, list[float]] = {"today": [], "auto": []}
    for r in range(rounds):
        for k in ("today", "auto") if r % 2 else ("auto", "today"):
            times[k].append(_timed_epoch(nets[k], opts[k], x, y, 1e9))
    ratios = [a / b for a, b in zip(times["auto"], times["today"])]
    print(f"MLP quiet, {len(x)} images, {rounds} rounds, loadavg {os.getloadavg()[0]:.1f}")
    for k, v in times.items():
        print(f"  {k:5s} " + " ".join(f"{t:.3f}" for t in v))
    gov = threads._blas_governor
    print(f"  auto / today per round: {' '.join(f'{v:.3f}' for v in ratios)}; median {statistics.median(ratios):.3f}"
          f" (goal <= 1.03); the governor's steps per count: {gov.steps if gov else {}}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nets", default="mlp,cnn")
    ap.add_argument("--mlp-images", type=int, default=60000)
    ap.add_argument("--cnn-images", type=int, default=16384)
    ap.add_argument("--cap", type=float, default=30.0, help="stop an epoch after this many seconds and extrapolate")
    ap.add_argument("--no-blas", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--quiet-ab", type=int, default=0, metavar="ROUNDS",
                    help="only the MLP's quiet A/B: today's path against auto, alternating epochs in one process")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker, args.images, args.threads, args.cap)
        return

    from dnnspec.engine import cpus, threads

    if args.quiet_ab:
        x, y, what = load(args.mlp_images)
        quiet_ab(x, y, args.quiet_ab)
        return
    levels = threads.levels(threads.budget())
    torch_ok = not args.no_torch and torch_available()
    print(f"CPUs: os.cpu_count {os.cpu_count()}, affinity {cpus.affinity_cpus()}, cgroup quota "
          f"{cpus.cgroup_cpus()}, budget {threads.budget()}; GEMM pieces {threads.pieces()}; "
          f"counts {levels}; torch {'yes' if torch_ok else 'no'}")
    for net_name in args.nets.split(","):
        n = args.mlp_images if net_name == "mlp" else args.cnn_images
        x, y, what = load(n)
        names = configs(net_name, levels, not args.no_blas, torch_ok)
        print(f"\n{net_name}: {SPECS[net_name].name}, {len(x)} images ({what}), batch {BATCH}; seconds per epoch")
        engine_epoch(net_name, x[:BATCH * 8], y[:BATCH * 8], "auto", args.cap)  # warm-up: numba, buffers
        rows = []
        for r in range(args.rounds):
            row = {}
            for cond in ("quiet", "busy"):
                load0 = os.getloadavg()[0]
                if cond == "busy":
                    with Neighbour(limit=len(names) * (args.cap + 30)):
                        row[cond] = run_condition(net_name, x, y, names, r, args.cap)
                else:
                    row[cond] = run_condition(net_name, x, y, names, r, args.cap)
                cells = "  ".join(f"{k}{show(v[0])}{(' (' + v[1] + ')') if v[1] else ''}" for k, v in row[cond].items())
                print(f"  round {r + 1} {cond:5s} loadavg {load0:4.1f}->{os.getloadavg()[0]:4.1f}: {cells}")
            rows.append(row)
        summary(net_name, levels, rows)


if __name__ == "__main__":
    main()
