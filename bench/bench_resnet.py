"""Epoch time of specs/fashion_resnet.dnn's residual CNN, beside PyTorch's same network in the same rounds.

Network (from the spec; batch 128, Fashion-MNIST 1x28x28, 54,000 training images = 60,000
less the spec's validation=0.1, so 422 batches an epoch)::

    conv 32@3x3 same, no bias -> BN -> ReLU -> maxpool 2                            28x28 -> 14x14
    2 x [ y = ReLU(BN(conv 32@3x3(ReLU(BN(conv 32@3x3(x))))) + x) ]               14x14x32
    y = ReLU(BN(conv 64@3x3(ReLU(BN(conv 64@3x3 stride 2(x))))) + BN(conv 64@1x1 stride 2(x)))   -> 7x7x64
    y = ReLU(BN(conv 64@3x3(ReLU(BN(conv 64@3x3(x))))) + x)                        7x7x64
    global average pool -> dense 10 -> softmax (cross-entropy on the logits)

One timed step, as in bench/bench_cnn.py: the dnnspec side is ``net.loss_and_grads`` (input
cast, scaling and normalisation, forward and backward of the graph) plus the spec's optimizer
step (SGD with Nesterov momentum and L2 decay on kernels; AdamW for an ``adam`` spec with
decoupled decay) on a fixed batch of uint8 images, with the spec's label smoothing; the
PyTorch side does the same work in float32 on the CPU: uint8 -> float, ``x * scale/std -
mean/std`` with the net's own statistics, forward, cross-entropy, backward and
``torch.optim.SGD`` (or ``AdamW``), the decay on conv and dense weights only, as dnnspec
decays kernels only. Neither side augments (bench_cnn does not either): the spec's
horizontal flip costs the same data-loader time whichever engine trains. The padding is the
engine's SAME_UPPER (the stride-2 3x3 conv pads 0 above/left, 1 below/right: a ZeroPad2d on
the PyTorch side); batch norm uses eps 1e-5, running-stat momentum 0.01 (the spec's 0.99).
With Adam one difference remains and costs the same on both sides: dnnspec's Adam divides
by sqrt(s_hat + eps), PyTorch's by sqrt(s_hat) + eps.

PyTorch runs with ``torch.set_num_threads`` = the engine's thread count
(``$DNNSPEC_THREADS`` or the CPU budget; engine/threads.py). Rounds alternate the two sides,
and which goes first, so each round's ratio compares times taken within seconds of each
other on a machine whose speed drifts; each block has 2 untimed warm-up steps. Reported: the
median step per side times the batches, and the dnnspec/PyTorch ratio of every round.

``--check`` first proves the two sides compute the same network: dnnspec's initial weights
(float64) are copied into the PyTorch model (float64), and the inference logits on one
batch, the training-mode loss (batch statistics) and every parameter's gradient are
compared (largest relative difference, tolerance 1e-9).

    python bench/bench_resnet.py [--rounds 5] [--steps 15] [--check] [--no-torch]
    python bench/bench_resnet.py --ops [--rounds 6] [--steps 10]

``--ops`` instead times the engine's ops by kind with one thread and with two, alternating in
one process: where a second core saves time and where it does not.
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

from bench_cnn import load_batches  # noqa: E402  (bench/bench_cnn.py: one batch of Fashion-MNIST)
from timing import time_calls  # noqa: E402  (bench/timing.py)

from dnnspec import frontend, ir  # noqa: E402
from dnnspec.engine import threads  # noqa: E402
from dnnspec.engine.net import Net  # noqa: E402
from dnnspec.engine.optim import make_optimizer  # noqa: E402
from dnnspec.shapes import same_padding  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "specs" / "fashion_resnet.dnn"
TRAIN_IMAGES = 60000
CHECK_TOL = 1e-9  # float64 on both sides: only summation order differs


def build_net(model: ir.Model, x: np.ndarray, dtype=np.float32) -> Net:
    """The spec's Net (seed 0) with ``input.mean``/``input.std`` measured on ``x``, as the trainer does."""
    net = Net(model, dtype=dtype, seed=0)
    net.set_input_stats(x)
    return net


def engine_stepper(model: ir.Model, x: np.ndarray, y: np.ndarray):
    """One training step of the engine (``Net.loss_and_grads`` + the spec's optimizer) as a callable."""
    net = build_net(model, x)
    opt = make_optimizer(model.optimizer, net.params, net.trainable)

    def step():
        _, grads = net.loss_and_grads(x, y)
        opt.step(net.params, grads)

    step.threads = net.threads  # the trainer holds this context around whole epochs
    step.net = net
    return step


# --- PyTorch, when installed -------------------------------------------------------------


def torch_resnet(torch, momentum: float, eps: float):
    """The spec's network as a PyTorch user writes it (BasicBlock style), float32, fresh PyTorch init.

    Modules are created in the order of the spec's layers (the shortcut after the body), so
    ``torch_layers`` lists them as ``model.layers`` lists theirs.
    """
    nn = torch.nn

    def conv(cin: int, cout: int, k: int, stride: int, size: int) -> nn.Module:
        """k x k convolution, SAME_UPPER as dnnspec: the odd pixel of padding goes below/right."""
        if k == 1:
            return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        low, high = same_padding(size, k, stride)  # the same on both axes: square images and kernels
        if low == high:
            return nn.Conv2d(cin, cout, k, stride=stride, padding=low, bias=False)
        pad = nn.ZeroPad2d((low, high, low, high))  # (left, right, top, bottom)
        return nn.Sequential(pad, nn.Conv2d(cin, cout, k, stride=stride, bias=False))

    def bn(c: int) -> nn.Module:
        return nn.BatchNorm2d(c, eps=eps, momentum=momentum)

    class Block(nn.Module):
        """y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); shortcut: 1x1 conv stride s + BN on a new shape."""

        def __init__(self, cin: int, cout: int, stride: int, size: int):
            super().__init__()
            self.body = nn.Sequential(conv(cin, cout, 3, stride, size), bn(cout), nn.ReLU(inplace=True),
                                      conv(cout, cout, 3, 1, -(-size // stride)), bn(cout))
            self.shortcut = (nn.Sequential(conv(cin, cout, 1, stride, size), bn(cout))
                             if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    return nn.Sequential(
        conv(1, 32, 3, 1, 28), bn(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        Block(32, 32, 1, 14), Block(32, 32, 1, 14), Block(32, 64, 2, 14), Block(64, 64, 1, 7),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def bn_settings(model: ir.Model) -> tuple[float, float]:
    """(PyTorch momentum, eps) of the spec's batch norms: torch's momentum is 1 - dnnspec's."""
    (setting,) = {(1.0 - layer.options["momentum"], layer.options["eps"])
                  for layer in model.layers if layer.kind == "batchnorm"}
    return setting


def torch_layers(torch, tmodel) -> dict[str, list]:
    """PyTorch's Conv2d, BatchNorm2d and Linear modules in creation order, keyed by dnnspec kind."""
    kinds = {torch.nn.Conv2d: "conv2d", torch.nn.BatchNorm2d: "batchnorm", torch.nn.Linear: "dense"}
    out = {kind: [] for kind in kinds.values()}
    for module in tmodel.modules():
        if type(module) in kinds:
            out[kinds[type(module)]].append(module)
    return out


def torch_input(torch, net: Net):
    """x uint8 (N, 1, 28, 28) -> the engine's input: x * scale/std - mean/std per channel (net's dtype)."""
    dtype = torch.float64 if net.dtype == np.float64 else torch.float32
    std = torch.from_numpy(net.params["input.std"].astype(np.float64)).reshape(1, -1, 1, 1)
    mean = torch.from_numpy(net.params["input.mean"].astype(np.float64)).reshape(1, -1, 1, 1)
    a, b = (net.model.input.scale / std).to(dtype), (mean / std).to(dtype)
    return lambda xt: xt.to(dtype) * a - b


def torch_optimizer(torch, tmodel, step: ir.Step):
    """The spec's optimizer in PyTorch, the decay on conv/dense weights only (dnnspec: kernels only).

    ``sgd`` (momentum, Nesterov, L2 decay added to the gradient: torch.optim.SGD's weight_decay) or
    ``adam`` with ``decay_mode=decoupled`` (torch.optim.AdamW).
    """
    opts = step.options
    decayed = [m.weight for m in tmodel.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ids = {id(p) for p in decayed}
    rest = [p for p in tmodel.parameters() if id(p) not in ids]
    groups = [{"params": decayed, "weight_decay": opts["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    if step.kind == "sgd" and opts.get("decay_mode", "l2") == "l2":
        return torch.optim.SGD(groups, lr=opts["lr"], momentum=opts["momentum"], nesterov=bool(opts["nesterov"]))
    if step.kind == "adam" and opts.get("decay_mode") == "decoupled":
        return torch.optim.AdamW(groups, lr=opts["lr"], betas=(opts["beta1"], opts["beta2"]), eps=opts["eps"])
    sys.exit(f"bench_resnet: no PyTorch twin for the spec's optimizer {step.kind} {dict(opts)}")


def torch_stepper(model: ir.Model, net: Net, x: np.ndarray, y: np.ndarray):
    """One training step of the same network in PyTorch (CPU, the engine's thread count), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads.threads())
    torch.manual_seed(0)
    tmodel = torch_resnet(torch, *bn_settings(model)).train()
    opt = torch_optimizer(torch, tmodel, model.optimizer)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=model.loss.options.get("label_smoothing", 0.0))
    prep = torch_input(torch, net)
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(tmodel(prep(xt)), yt)
        loss.backward()
        opt.step()

    step.version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return step


# --- the cross-check ---------------------------------------------------------------------


#: dnnspec's parameter of each kind -> (PyTorch attribute, transposed?); dense kernels are (in, units).
TORCH_NAMES = {"conv2d": {"kernel": ("weight", False)},
               "dense": {"kernel": ("weight", True), "bias": ("bias", False)},
               "batchnorm": {"gamma": ("weight", False), "beta": ("bias", False),
                             "running_mean": ("running_mean", False), "running_var": ("running_var", False)}}


def paired(torch, model: ir.Model, tmodel):
    """(dnnspec name, PyTorch tensor, transposed?) for every array, layer by layer in the spec's order."""
    for kind, modules in torch_layers(torch, tmodel).items():
        layers = [layer for layer in model.layers if layer.kind == kind]
        if len(layers) != len(modules):
            raise SystemExit(f"bench_resnet: {len(layers)} {kind} layers in {SPEC.name}, {len(modules)} in the "
                             f"PyTorch model; update torch_resnet to the spec")
        for layer, module in zip(layers, modules):
            for name, (attr, transposed) in TORCH_NAMES[kind].items():
                yield f"{layer.name}.{name}", getattr(module, attr), transposed


def copy_weights(torch, model: ir.Model, net: Net, tmodel) -> None:
    """dnnspec's arrays -> the PyTorch modules (shapes must agree after the dense kernels' transpose)."""
    for name, target, transposed in paired(torch, model, tmodel):
        value = net.params[name].T if transposed else net.params[name]
        if tuple(target.shape) != value.shape:
            raise SystemExit(f"bench_resnet: {name} is {value.shape} in dnnspec, {tuple(target.shape)} in "
                             f"PyTorch; update torch_resnet to the spec")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def torch_grads(torch, model: ir.Model, tmodel) -> dict[str, np.ndarray]:
    """PyTorch's gradients of the trainable tensors, under dnnspec's names and layouts."""
    return {name: t.grad.numpy().T if transposed else t.grad.numpy()
            for name, t, transposed in paired(torch, model, tmodel) if t.requires_grad}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max |b|, 1e-12): the largest difference relative to the reference's scale."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def cross_check(model: ir.Model, x: np.ndarray, y: np.ndarray) -> bool:
    """Same weights, same batch, float64: inference logits, training loss and all gradients agree? Prints the errors."""
    try:
        import torch
    except ImportError:
        print("check: PyTorch not installed: skipped")
        return True

    net = build_net(model, x, np.float64)
    tmodel = torch_resnet(torch, *bn_settings(model)).double()
    copy_weights(torch, model, net, tmodel)
    xt, yt = torch_input(torch, net)(torch.from_numpy(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    with torch.no_grad():
        e_logits = rel_err(net.logits(x), tmodel.eval()(xt).numpy())
    loss, grads = net.loss_and_grads(x, y)  # training mode: batch statistics in every batch norm
    t_loss = torch.nn.functional.cross_entropy(tmodel.train()(xt), yt,
                                               label_smoothing=model.loss.options.get("label_smoothing", 0.0))
    t_loss.backward()
    t_grads = torch_grads(torch, model, tmodel)
    if set(t_grads) != set(net.trainable):
        raise SystemExit(f"bench_resnet: gradients {sorted(set(net.trainable) ^ set(t_grads))} on one side only")
    e_loss = abs(float(loss) - t_loss.item()) / abs(t_loss.item())
    worst = max(t_grads, key=lambda n: rel_err(grads[n], t_grads[n]))
    e_grad = rel_err(grads[worst], t_grads[worst])
    ok = max(e_logits, e_loss, e_grad) < CHECK_TOL
    print(f"check (float64, same weights, one batch of {len(x)}): inference logits rel. err {e_logits:.1e}, "
          f"training loss {e_loss:.1e}, gradients of {len(t_grads)} params max {e_grad:.1e} ({worst}); "
          f"{'same network' if ok else f'DIFFERENT (tolerance {CHECK_TOL:g})'}")
    return ok


# --- the rounds --------------------------------------------------------------------------


def run_rounds(engine, torch_step, rounds: int, steps: int) -> tuple[list[float], list[float]]:
    """Median step seconds per round for each side; odd rounds time PyTorch first."""
    e_round, t_round = [], []

    def time_engine():
        with engine.threads():
            e_round.append(statistics.median(time_calls(engine, steps, 2)))

    def time_torch():
        t_round.append(statistics.median(time_calls(torch_step, steps, 2)))

    for r in range(rounds):
        order = [time_engine] if torch_step is None else [time_engine, time_torch][::1 if r % 2 == 0 else -1]
        for side in order:
            side()
    return e_round, t_round


_COPIER = """
import sys, time, numpy as np
a = np.ones(1 << 22, np.float32); b = np.empty_like(a)
sys.stdout.write("ready\\n"); sys.stdout.flush()
end = time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < end:
    np.copyto(b, a)
"""


def copy_bandwidth(seconds: float = 1.0) -> tuple[float, float]:
    """GB/s (read + write) of 16 MB copies here, alone and while another process copies as well (one thread each)."""
    import subprocess

    a = np.ones(1 << 22, np.float32)
    b = np.empty_like(a)

    def rate() -> float:
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds / 2:
            np.copyto(b, a)
            n += 1
        return 2 * a.nbytes * n / (time.perf_counter() - t) / 1e9

    rate()  # pages touched
    alone = rate()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen([sys.executable, "-c", _COPIER, str(seconds * 2)], stdout=subprocess.PIPE, env=env,
                             text=True)
    try:
        other.stdout.readline()  # it copies from now on
        shared = rate()
    finally:
        other.kill()
        other.wait()
    return alone, shared


def op_scaling(engine, rounds: int, steps: int) -> None:
    """Per op kind, forward and backward: time per step with one thread and with two, alternating in one process.

    ``$DNNSPEC_THREADS`` is set before each block of steps (the engine reads it when its
    context is entered); every op's forward and backward are timed where the network calls
    them. Prints, per kind: ms per step on 1 and 2 threads, the speed-up, and the ms that
    the second thread fails to save (2-thread time less half the 1-thread time).
    """
    spent: dict[int, dict[str, float]] = {0: {}, 1: {}, 2: {}}  # 0: the untimed steps
    now = [0]

    def timed(op, which: str):
        fn, kind = getattr(op, which), f"{type(op).__name__}{' (winograd)' if getattr(op, 'winograd', False) else ''}"
        key = f"{kind} {which}"

        def call(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                bucket = spent[now[0]]
                bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - t

        setattr(op, which, call)

    for op in engine.net.run_ops:
        timed(op, "forward")
        timed(op, "backward")
    import resource

    old = os.environ.get(threads.ENV)
    total, cpu = {1: 0.0, 2: 0.0}, {1: 0.0, 2: 0.0}
    try:
        for r in range(rounds):
            for k in ((1, 2) if r % 2 == 0 else (2, 1)):
                os.environ[threads.ENV] = str(k)
                with engine.threads():
                    now[0] = 0  # an untimed step first (the workers wake), its op times discarded
                    engine()
                    now[0] = k
                    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
                    for _ in range(steps):
                        engine()
                    total[k] += time.perf_counter() - t
                    r1 = resource.getrusage(resource.RUSAGE_SELF)
                    cpu[k] += r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    finally:
        if old is None:
            os.environ.pop(threads.ENV, None)
        else:
            os.environ[threads.ENV] = old
    n = rounds * steps
    print(f"per op kind, ms per step ({rounds} rounds of {steps} steps each, alternating 1 and 2 threads): "
          f"whole step {total[1] / n * 1e3:.1f} / {total[2] / n * 1e3:.1f}, CPU time a step (all threads, "
          f"getrusage) {cpu[1] / n * 1e3:.1f} / {cpu[2] / n * 1e3:.1f}")
    alone, shared = copy_bandwidth()
    print(f"a 16 MB copy (np.copyto) in this process: {alone:.1f} GB/s alone, {shared:.1f} GB/s while a second "
          f"process copies too: what one core's passes leave to the other")
    print(f"{'op':32} {'1 thread':>9} {'2 threads':>9} {'speed-up':>9} {'not saved':>9}")
    for key in sorted(spent[1], key=lambda key: -spent[1][key]):
        a, b = spent[1][key] / n * 1e3, spent[2].get(key, 0.0) / n * 1e3
        print(f"{key:32} {a:9.2f} {b:9.2f} {a / b if b else float('nan'):9.2f} {b - a / 2:9.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each times both sides, alternating which first")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per side and round (median)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    ap.add_argument("--check", action="store_true",
                    help="first compare logits, loss and gradients with PyTorch on dnnspec's weights (float64)")
    ap.add_argument("--ops", action="store_true",
                    help="instead: each op kind's time with one and with two threads, alternating in one process")
    args = ap.parse_args(argv)

    model = frontend.load(str(SPEC))
    batch = model.train["batch"]
    batches = -(-round(TRAIN_IMAGES * (1 - model.train.get("validation", 0.0))) // batch)
    x, y = load_batches(batch, np.random.default_rng(0))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; "
          f"{SPEC.name}, batch {batch}, {batches} batches/epoch; {args.rounds} rounds of {args.steps} steps each")
    if args.check and not args.no_torch and not cross_check(model, x, y):
        raise SystemExit(1)

    engine = engine_stepper(model, x, y)
    if args.ops:
        op_scaling(engine, args.rounds, args.steps)
        return
    torch_step = None if args.no_torch else torch_stepper(model, engine.net, x, y)
    e_round, t_round = run_rounds(engine, torch_step, args.rounds, args.steps)
    epoch = statistics.median(e_round) * batches
    print(f"dnnspec engine ({threads.threads()} threads): {epoch / batches * 1e3:.1f} ms/step -> {epoch:.1f} s/epoch "
          f"(per round, s/epoch: {' '.join(f'{e * batches:.1f}' for e in e_round)})")
    if args.no_torch:
        return
    if torch_step is None:
        print("PyTorch not installed: skipped (pip install torch --index-url https://download.pytorch.org/whl/cpu)")
        return
    t = statistics.median(t_round) * batches
    ratios = [e / t_ for e, t_ in zip(e_round, t_round)]
    print(f"PyTorch ({torch_step.version}): {t / batches * 1e3:.1f} ms/step -> {t:.1f} s/epoch "
          f"(per round, s/epoch: {' '.join(f'{t_ * batches:.1f}' for t_ in t_round)})")
    print(f"summary: dnnspec {epoch:.1f} s/epoch, PyTorch {t:.1f} s/epoch; dnnspec / PyTorch per round: "
          f"{' '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} (target <= 1)")


if __name__ == "__main__":
    main()
