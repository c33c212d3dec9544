"""The lecture's claims about deep networks, measured on Fashion-MNIST with several seeds.

    python examples/lecture_claims.py [--seeds 3] [--limit 12000] [--epochs 8] [--out claims.md]
    python examples/lecture_claims.py --quick          # a tiny run (seconds): checks the plumbing only

Five claims of the lecture *Deep Neural Networks*, each a small family of spec variants
that differ in the studied factor only:

(a) activations in a deep MLP: ELU > leaky ReLU > ReLU > tanh > sigmoid;
(b) batch norm (dense -> batchnorm -> sigmoid) rescues the deep sigmoid network;
(c) He initialisation suits ReLU networks better than Xavier;
(d) optimizers: RMSProp fixes AdaGrad's early stop, Adam trains faster than the others
    (judged on the final training loss: how far a fixed budget of steps gets);
(e) inverted dropout and weight scaling both work well (judged: test accuracies not separable).

The shared recipe (every variant, unless its claim changes it):

    input image[1, 28, 28] scale=1/255, normalize auto
    flatten; repeat 8 { dense 128 init=I; relu }; dense 10; softmax   (8 hidden layers)
    I = he_normal before the ReLU family, xavier_normal before tanh/sigmoid (the lecture's pairing)
    loss cross_entropy; optimizer adam lr=1e-3; train epochs=8 batch=128 validation=0 seed=S
    training set: the first 12,000 training images; test set: all 10,000 test images

Claim-specific factors: (b) a `batchnorm momentum=0.9` between each dense layer and its
sigmoid; (c) init=he_normal or xavier_normal, ReLU; (d) `sgd lr=0.01 momentum=0.9`,
`adagrad lr=0.01`, `rmsprop lr=1e-3 beta=0.9`, `adam lr=1e-3` (each at its customary rate);
(e) `dropout 0.2 mode=inverted|scale` after each hidden activation, beside the same net
without dropout (a reference, not judged).

Each variant is trained once per seed S = 0, 1, ..., N-1 (the seed drives the initial
weights and the shuffling and dropout masks; the data subset is the same), so the same
flags give the same numbers. BLAS runs single-threaded by default (`--blas-threads`):
OpenBLAS's sgemm gives other bits with 2 threads than with 1, and these small products
gain little from a second thread while losing much when another process holds the core.
A variant that recurs in several claims (the ReLU/He/Adam net is the (a) ReLU row, the
(c) He row, the (d) Adam row and the (e) reference) is trained once per seed: its spec
text is the same.

Reported per variant: test accuracy and final training loss (the running mean over the
last epoch, in training mode), mean ± sample standard deviation over the seeds.
Verdicts are computed from these numbers: A is better than B when its mean is better by
more than sqrt(std_A² + std_B²) (the spread of one run's difference); within that, the two
are "not separable". A claim's verdict is "yes" when every pair it states holds; "partly"
when some hold and the rest are not separable; "not separable" when none is separable;
"no" when a stated pair is reversed (or, for a claim of equality, when one is better).
Each verdict is followed by the measured order, best first.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import dnnspec
from dnnspec.data import load_data
from dnnspec.errors import DivergenceError, DnnspecError

DEPTH, WIDTH, BATCH, DROP_RATE = 8, 128, 128, 0.2
BASE = {"act": "relu", "init": None, "bn": False, "optimizer": "adam lr=1e-3", "dropout": None}
RELU_FAMILY = {"relu", "leaky_relu", "elu"}
TEMPLATE = """\
network lecture_claims
input     image[1, 28, 28] scale=1/255
normalize auto
classes   10
layers {{
  flatten
  repeat {depth} {{
{block}  }}
  dense 10
  softmax
}}
loss      cross_entropy
optimizer {optimizer}
train     epochs={epochs} batch={batch} validation=0 seed={seed}
"""


@dataclass(frozen=True)
class Claim:
    """One claim of the lecture: its variants (label -> changes to BASE) and the pairs it states.

    ``expect`` holds (a, rel, b): rel ">" says a is better than b, "=" says they are alike.
    ``metric`` is what "better" means: "accuracy" (higher) or "loss" (lower).
    ``reference`` labels variants shown for context but not judged.
    """

    key: str
    title: str
    says: str
    variants: tuple[tuple[str, dict[str, Any]], ...]
    expect: tuple[tuple[str, str, str], ...]
    metric: str = "accuracy"
    reference: tuple[str, ...] = ()


def ranking(*labels: str) -> tuple[tuple[str, str, str], ...]:
    """Every pair (earlier, ">", later) of a claimed order best-first: a ranking holds pairwise."""
    return tuple((a, ">", b) for i, a in enumerate(labels) for b in labels[i + 1:])


ACTS = (("ELU", {"act": "elu"}), ("leaky ReLU", {"act": "leaky_relu"}), ("ReLU", {}),
        ("tanh", {"act": "tanh"}), ("sigmoid", {"act": "sigmoid"}))
OPTS = (("SGD + momentum 0.9", {"optimizer": "sgd lr=0.01 momentum=0.9"}),
        ("AdaGrad", {"optimizer": "adagrad lr=0.01"}),
        ("RMSProp", {"optimizer": "rmsprop lr=1e-3 beta=0.9"}), ("Adam", {}))
CLAIMS = (
    Claim("(a)", "activation, deep MLP", "ELU > leaky ReLU > ReLU > tanh > sigmoid", ACTS,
          ranking(*(label for label, _ in ACTS))),
    Claim("(b)", "batch norm, deep sigmoid MLP", "batch norm rescues a deep sigmoid network",
          (("with batch norm", {"act": "sigmoid", "bn": True}), ("without batch norm", {"act": "sigmoid"})),
          (("with batch norm", ">", "without batch norm"),)),
    Claim("(c)", "init, ReLU MLP", "He initialisation is the one for ReLU (Xavier for sigmoid)",
          (("He", {"init": "he_normal"}), ("Xavier", {"init": "xavier_normal"})), (("He", ">", "Xavier"),)),
    Claim("(d)", "optimizer", "AdaGrad stops too early, RMSProp fixes it; Adam is faster than the others "
          "(judged on final training loss)", OPTS,
          (("Adam", ">", "SGD + momentum 0.9"), ("Adam", ">", "AdaGrad"), ("Adam", ">", "RMSProp"),
           ("RMSProp", ">", "AdaGrad")), metric="loss"),
    Claim("(e)", f"dropout {DROP_RATE}", "inverted dropout and weight scaling differ but both work well",
          (("inverted", {"dropout": "inverted"}), ("weight scaling", {"dropout": "scale"}), ("no dropout", {})),
          (("inverted", "=", "weight scaling"),), reference=("no dropout",)),
)


def spec_text(change: dict[str, Any], epochs: int, seed: int) -> str:
    """The `.dnn` text of BASE with ``change`` applied; the init is written out, never left to auto."""
    v = {**BASE, **change}
    init = v["init"] or ("he_normal" if v["act"] in RELU_FAMILY else "xavier_normal")
    lines = [f"dense {WIDTH} init={init}", "batchnorm momentum=0.9" if v["bn"] else "", v["act"],
             f"dropout {DROP_RATE} mode={v['dropout']}" if v["dropout"] else ""]
    block = "".join(f"    {line}\n" for line in lines if line)
    return TEMPLATE.format(depth=DEPTH, block=block, optimizer=v["optimizer"], epochs=epochs, batch=BATCH, seed=seed)


def train_one(text: str, data: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Train the spec on (x, y), evaluate on (x_test, y_test): test accuracy and final training loss.

    A run whose loss turns non-finite is recorded as NaN (and shown as diverged), not dropped.
    """
    x, y, x_test, y_test = data
    net = dnnspec.compile(text)
    try:
        history = net.fit(x, y, progress=False)
    except DivergenceError:
        return {"accuracy": math.nan, "loss": math.nan}
    return {"accuracy": net.evaluate(x_test, y_test)["accuracy"], "loss": history.rows[-1]["loss"]}


def measure(claims, seeds: int, epochs: int, data, log=sys.stderr) -> dict[tuple[str, str], list[dict]]:
    """{(claim key, variant label): one result per seed}; identical spec texts are trained once."""
    cache: dict[str, dict[str, float]] = {}
    jobs = [(c.key, label, change, s) for c in claims for label, change in c.variants for s in range(seeds)]
    unique = len({spec_text(change, epochs, s) for _, _, change, s in jobs})
    results: dict[tuple[str, str], list[dict]] = {}
    for key, label, change, seed in jobs:
        text = spec_text(change, epochs, seed)
        if text not in cache:
            t0 = time.perf_counter()
            cache[text] = train_one(text, data)
            print(f"[{len(cache)}/{unique}] {key} {label}, seed {seed}: test accuracy "
                  f"{cache[text]['accuracy']:.4f}, loss {cache[text]['loss']:.4f} "
                  f"({time.perf_counter() - t0:.1f} s)", file=log, flush=True)
        results.setdefault((key, label), []).append(cache[text])
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the finite values; NaN if none."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def compare(a: tuple[float, float], b: tuple[float, float], higher_better: bool) -> str:
    """">" if a is better than b by more than sqrt(std_a² + std_b²), "<" if worse, "=" if not separable, "?" if NaN."""
    (ma, sa), (mb, sb) = a, b
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return "?"
    diff = (ma - mb) if higher_better else (mb - ma)
    margin = math.hypot(sa, sb)
    return ">" if diff > margin else "<" if diff < -margin else "="


def measured_order(labels: list[str], stats: dict[str, tuple[float, float]], higher_better: bool) -> str:
    """The labels best first, joined by ">" (separable from the next) or "≈" (not separable); NaN ones last, named."""
    sign = 1.0 if higher_better else -1.0
    order = sorted((k for k in labels if math.isfinite(stats[k][0])), key=lambda k: -sign * stats[k][0])
    out = order[:1]
    for prev, cur in zip(order, order[1:]):
        out.append(f"{'>' if compare(stats[prev], stats[cur], higher_better) == '>' else '≈'} {cur}")
    failed = [f"; {k} diverged" for k in labels if not math.isfinite(stats[k][0])]
    return " ".join(out) + "".join(failed)


def verdict(expect, stats: dict[str, tuple[float, float]], higher_better: bool) -> str:
    """Whether the stats bear out the claimed pairs: "yes", "partly", "not separable" or "no", with the measured order.

    "no" when a claimed ">" pair is reversed or a claimed "=" pair is separable; "partly" when
    some ">" pairs hold and the others are not separable.
    ``expect``: (a, ">" or "=", b) triples; ``stats``: label -> (mean, std) of the metric.
    """
    outcomes = [(rel, compare(stats[a], stats[b], higher_better)) for a, rel, b in expect]
    labels = [k for k in stats if any(k in (a, b) for a, _, b in expect)]
    order = measured_order(labels, stats, higher_better)
    if any(got == "?" for _, got in outcomes):
        return f"not measured (a run diverged): {order}"
    wrong = sum(got != rel if rel == "=" else got == "<" for rel, got in outcomes)
    unclear = sum(rel == ">" and got == "=" for rel, got in outcomes)
    if wrong:
        return f"no: {order}"
    if unclear == len(outcomes):
        return f"not separable: {order}"
    return f"partly: {order}" if unclear else f"yes: {order}"


def cell(runs: list[dict], metric: str) -> str:
    """'0.8412 ± 0.0031' over the seeds; diverged runs counted."""
    values = [r[metric] for r in runs]
    m, s = mean_std(values)
    bad = sum(not math.isfinite(v) for v in values)
    text = "diverged" if not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"
    return text + (f" ({bad} of {len(values)} diverged)" if bad and math.isfinite(m) else "")


def render(claims, results, caption: str) -> str:
    """The markdown table: one row per variant; the claim, the lecture's words and the verdict on its first row."""
    rows = ["| claim | variant | test accuracy | final training loss | the lecture says | agrees? |",
            "|---|---|---|---|---|---|"]
    for c in claims:
        runs = {label: results[(c.key, label)] for label, _ in c.variants}
        judged = {k: mean_std([r[c.metric] for r in v]) for k, v in runs.items() if k not in c.reference}
        says = verdict(c.expect, judged, c.metric == "accuracy")
        for i, (label, _) in enumerate(c.variants):
            name = label + (" (reference)" if label in c.reference else "")
            first = i == 0
            rows.append(f"| {f'{c.key} {c.title}' if first else ''} | {name} | {cell(runs[label], 'accuracy')} | "
                        f"{cell(runs[label], 'loss')} | {c.says if first else ''} | {says if first else ''} |")
    return caption + "\n\n" + "\n".join(rows) + "\n"


def caption(args: argparse.Namespace, n_train: int, n_test: int) -> str:
    """The recipe behind the numbers, written above the table."""
    return (f"Fashion-MNIST, {n_train:,} training images, {n_test:,} test images; MLP with {DEPTH} hidden "
            f"dense layers of {WIDTH} (He init before the ReLU family, Xavier before tanh/sigmoid), Adam lr=1e-3, "
            f"batch {BATCH}, {args.epochs} epochs, no validation split; mean ± std over seeds 0..{args.seeds - 1}. "
            f"Only the claim's factor changes. '>' = better by more than sqrt(std₁² + std₂²), "
            f"'≈' = not separable; (d) is judged on the final training loss (lower is better), "
            f"the others on test accuracy.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="runs per variant, seeds 0..N-1 (default 3)")
    parser.add_argument("--limit", type=int, default=None, help="training images used (default 12000)")
    parser.add_argument("--test-limit", type=int, default=None, help="test images used (default: all 10000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run for tests: 2 seeds, 512 training and 1000 test images, 1 epoch")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (default 1: the same bits on any load; the count changes the bits)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    quick = {"seeds": 2, "limit": 512, "test_limit": 1000, "epochs": 1}
    full = {"seeds": 3, "limit": 12000, "test_limit": None, "epochs": 8}
    for key, default in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for key in ("seeds", "limit", "test_limit", "epochs", "blas_threads"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, found {value}")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist; create it first")
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give a file name such as {args.out / 'claims.md'}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every claim's variants, print the table (and write it with --out); return the table and results."""
    args = parse_args(argv)
    model = dnnspec.compile(spec_text({}, args.epochs, 0)).model
    ds = load_data("fashion-mnist", model)
    data = (ds.x_train[:args.limit], ds.y_train[:args.limit], ds.x_test[:args.test_limit], ds.y_test[:args.test_limit])
    t0 = time.perf_counter()
    with threadpool_limits(args.blas_threads, user_api="blas"):
        results = measure(CLAIMS, args.seeds, args.epochs, data)
    table = render(CLAIMS, results, caption(args, len(data[0]), len(data[2])))
    print(table)
    print(f"{time.perf_counter() - t0:.0f} s of training and evaluation", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return {"table": table, "results": results}


if __name__ == "__main__":
    try:
        main()
    except DnnspecError as exc:  # e.g. Fashion-MNIST not installed: its one-line message, no traceback
        sys.exit(f"lecture_claims.py: {exc}")
    except OSError as exc:  # --out not writable
        sys.exit(f"lecture_claims.py: cannot write {exc.filename}: {exc.strerror}")
