"""Epoch time of the issue-5 CNN on Fashion-MNIST-sized data, and its ratio to the GEMM bound.

Network (batch 128, 60,000 images of 1x28x28, 469 batches an epoch)::

    conv 32@3x3 -> relu -> maxpool 2 -> conv 64@3x3 -> relu -> maxpool 2
    -> flatten -> dense 128 -> relu -> dropout 0.5 -> dense 10 -> softmax (cross-entropy)

One timed step = ``net.loss_and_grads`` (forward + backward of the whole network) plus
an Adam update. The epoch time is the median step time times the number of batches.

GEMM bound: every matrix multiply of one training step, at the exact shapes and
memory layouts the engine uses, is timed on its own with numpy (median of repeats);
their sum times the batches is the time an epoch would take if it did nothing but
those multiplies. The ratio epoch / bound says how much the rest (im2col, col2im,
pooling, activations, the optimizer) costs on top. Both are measured in the same run,
so the ratio is meaningful even on a busy machine; absolute times are not.

When PyTorch is importable, the same network (same layers, Adam, float32, CPU) is
timed the same way and reported beside it; it is never a dependency.

    python bench/bench_cnn.py [--rounds 5] [--steps 15] [--batch 128] [--n 60000] [--profile] [--no-torch]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timing import time_calls  # noqa: E402  (bench/timing.py)

from dnnspec import ir  # noqa: E402
from dnnspec.engine.net import Net  # noqa: E402
from dnnspec.engine.optim import Adam  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")

LAYERS = [
    ("conv2d", {"filters": 32, "kernel": 3}), ("relu", {}), ("maxpool", {"kernel": 2}),
    ("conv2d", {"filters": 64, "kernel": 3}), ("relu", {}), ("maxpool", {"kernel": 2}),
    ("flatten", {}), ("dense", {"units": 128}), ("relu", {}), ("dropout", {"rate": 0.5}),
    ("dense", {"units": 10}), ("softmax", {}),
]


def load_batches(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One batch of Fashion-MNIST training images (uint8, N x 1 x 28 x 28) and labels; random if absent."""
    images = FASHION / "train-images-idx3-ubyte.gz"
    if images.exists():
        from dnnspec.data import read_idx

        x = read_idx(images)[:4096].reshape(-1, 1, 28, 28)
        y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:4096].astype(np.int64)
        idx = rng.choice(len(x), batch, replace=False)
        return x[idx], y[idx]
    return rng.integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, batch)


# --- the GEMMs of one training step ------------------------------------------------------


def step_gemms(model: ir.Model, batch: int) -> list[tuple[str, float, object]]:
    """(label, FLOPs, matmul thunk) for every matmul of one training step, as the engine calls it.

    The shapes and operand layouts come from the compiled ops (``Net``), so the bound
    follows the engine: K = kh*kw*C taps (+1 where the bias rides in the GEMM), M = N*P
    output pixels, where P leaves out the pixels a following max pool floors away (the
    engine does not compute them; see Conv2D.feed_pool).

    conv2d "rows": Y.T (M, F) = cols (M, K) @ W.T; dW = dY.T.T @ cols; dcols = dY.T @ W as one
    matmul with W viewed (kh*kw, F, C). "unfold" feeding a pool: Y (F, M) = W (F, K+1) @ cols
    (K+1, M); dW = dY @ cols.T; dcols = W.T @ dY. Plain "unfold": the same per example (batched).
    dense: y = x W, dW = x.T dy, dx = dy W.T. The first layer with parameters skips dx.
    Operands are random float32 arrays of those shapes and layouts.
    """
    rng = np.random.default_rng(0)
    net = Net(model, seed=0)

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def mm(a, b):
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), np.float32)
        return lambda: np.matmul(a, b, out=out)

    gemms, first = [], True
    for op in net.run_body:
        layer = op.layer
        if layer.kind == "conv2d":
            f, c, kh, kw = layer.param("kernel").shape
            k, p = c * kh * kw, op._npix()
            m, flops = batch * p, 2.0 * f * c * kh * kw * batch * p
            if op.layout == "rows":
                w, cols, dyt = arr(f, k), arr(m, k), arr(m, f)
                calls = [mm(cols, w.T), mm(dyt.T, cols), mm(dyt[None], w.reshape(f, kh * kw, c).transpose(1, 0, 2))]
            elif op.pool is not None:
                k1 = k + op.has_bias
                w, cols, dy = arr(f, k1), arr(k1, m), arr(f, m)
                calls = [mm(w, cols), mm(dy, cols.T), mm(w[:, :k].T, dy)]
            else:
                k1 = k + op.has_bias
                w, cols, dy = arr(f, k1), arr(batch, k1, p), arr(batch, f, p)
                calls = [mm(w, cols), mm(dy, cols.transpose(0, 2, 1)), mm(w[:, :k].T, dy)]
            gemms += [(f"{layer.name} fwd", flops, calls[0]), (f"{layer.name} dW", flops, calls[1])]
            if not first:
                gemms.append((f"{layer.name} dx", flops, calls[2]))
        elif layer.kind == "dense":
            i, o = layer.param("kernel").shape
            x, w, dy = arr(batch, i), arr(i, o), arr(batch, o)
            gemms += [(f"{layer.name} fwd", 2.0 * batch * i * o, mm(x, w)),
                      (f"{layer.name} dW", 2.0 * batch * i * o, mm(x.T, dy))]
            if not first:
                gemms.append((f"{layer.name} dx", 2.0 * batch * i * o, mm(dy, w.T)))
        else:
            continue
        first = False
    return gemms


def gemm_bound(model: ir.Model, batch: int, repeats: int = 9) -> tuple[float, float, list[tuple[str, float]]]:
    """(seconds per step, FLOPs per step, per-GEMM medians) of numpy's matmul at the step's shapes."""
    total_s, total_flops, rows = 0.0, 0.0, []
    for label, flops, call in step_gemms(model, batch):
        med = statistics.median(time_calls(call, repeats, 2))
        total_s += med
        total_flops += flops
        rows.append((label, med))
    return total_s, total_flops, rows


# --- the engine ------------------------------------------------------------------------


def engine_stepper(model: ir.Model, x, y):
    """One training step of the engine (``Net.loss_and_grads`` + Adam) as a callable."""
    net = Net(model, seed=0)
    opt = Adam(net.params, net.trainable, lr=1e-3)

    def step():
        _, grads = net.loss_and_grads(x, y)
        opt.step(net.params, grads)

    step.threads = net.threads  # the trainer holds this context around whole epochs
    return step


def engine_profile(model: ir.Model, x, y, steps: int) -> list[tuple[str, float, float]]:
    """Median forward and backward seconds per op (training mode), for finding hot spots."""
    net = Net(model, seed=0)
    context = net.threads()  # as in training (engine/threads.py)
    context.__enter__()
    h0 = net._prepare(x, False)
    fwd = {op.name: [] for op in net.run_body}
    bwd = {op.name: [] for op in net.run_body}
    rng = np.random.default_rng(0)
    for _ in range(steps + 2):
        h = h0
        for op in net.run_body:
            t0 = time.perf_counter()
            h = op.forward(h, net.params, True, rng)
            fwd[op.name].append(time.perf_counter() - t0)
        _, d = net.loss_fn(h, y)
        for op in reversed(net.run_body[net._first:]):
            t0 = time.perf_counter()
            d = op.backward(d, net.params, net.grads)
            bwd[op.name].append(time.perf_counter() - t0)
    context.__exit__(None, None, None)
    return [(op.name, statistics.median(fwd[op.name][2:]),
             statistics.median(bwd[op.name][2:]) if bwd[op.name] else 0.0) for op in net.run_body]


# --- PyTorch, when installed -------------------------------------------------------------


def torch_stepper(x, y):
    """One training step of the same network in PyTorch (CPU, its default threads), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()

    step.version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed training steps (median is reported)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n", type=int, default=60000, help="examples per epoch")
    ap.add_argument("--profile", action="store_true", help="also print forward/backward time per op")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds; each times the engine, then PyTorch, then the GEMMs, one after the other")
    args = ap.parse_args(argv)

    batches = -(-args.n // args.batch)
    model = ir.model_from_layers((1, 28, 28), LAYERS, scale=1 / 255)
    x, y = load_batches(args.batch, np.random.default_rng(0))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; "
          f"batch {args.batch}, {batches} batches/epoch; {args.rounds} rounds of {args.steps} steps each")

    engine = engine_stepper(model, x, y)
    torch_step = None if args.no_torch else torch_stepper(x, y)
    # Rounds alternate the engine, PyTorch and the GEMM bound, so each round's ratios compare
    # times taken within seconds of each other: this machine's speed drifts by +-20% between
    # minutes (other tenants), which a single engine run followed by a single PyTorch run
    # would put into the ratio. Each block starts with 2 untimed warm-up steps.
    e_round, t_round, b_round, rows = [], [], [], None
    for _ in range(args.rounds):
        with engine.threads():
            e_round.append(statistics.median(time_calls(engine, args.steps, 2)))
        if torch_step is not None:
            t_round.append(statistics.median(time_calls(torch_step, args.steps, 2)))
        bound_s, flops, rows_r = gemm_bound(model, args.batch)
        b_round.append(bound_s)
        rows = rows if rows is not None else {label: [] for label, _ in rows_r}
        for label, med in rows_r:
            rows[label].append(med)
    step_s, bound_s = statistics.median(e_round), statistics.median(b_round)
    epoch, bound = step_s * batches, bound_s * batches
    print(f"GEMM bound: {flops / 1e9:.2f} GFLOP/step at {flops / bound_s / 1e9:.0f} GFLOP/s -> {bound:.1f} s/epoch")
    for label, meds in rows.items():
        print(f"    {label:<12} {statistics.median(meds) * 1e3:7.2f} ms")
    print(f"dnnspec engine: {step_s * 1e3:.1f} ms/step -> {epoch:.1f} s/epoch, {epoch / bound:.2f}x the GEMM bound "
          f"(median of rounds; per round, x the bound: {' '.join(f'{e / b:.2f}' for e, b in zip(e_round, b_round))})")

    if args.profile:
        print("per op (ms): forward / backward")
        for name, f, b in engine_profile(model, x, y, args.steps):
            print(f"    {name:<10} {f * 1e3:7.2f} {b * 1e3:7.2f}")

    if args.no_torch:
        return
    if torch_step is None:
        print("PyTorch not installed: skipped")
        return
    t = statistics.median(t_round) * batches
    ratios = [e / t_ for e, t_ in zip(e_round, t_round)]
    print(f"PyTorch ({torch_step.version}): {t / batches * 1e3:.1f} ms/step -> {t:.1f} s/epoch, "
          f"{t / bound:.2f}x the GEMM bound")
    print(f"dnnspec / PyTorch per round: {' '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f} (target <= 1)")

if __name__ == "__main__":
    main()
