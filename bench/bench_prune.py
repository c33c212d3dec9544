"""An original run against its pruned version: ONNX file size, parameters, FLOPs, onnxruntime latency.

Exports both (float32, same opset) and times them at batch 1 and batch 1024 in alternating
rounds (dnnspec.export.quantize.alternating_rounds: in each round every model runs
``calls`` times in turn, the order reversed every other round, and the ratio pruned /
original is taken within the round, so that a slow spell of a shared machine hits both
alike). Each round's ratio is printed, then the median. The inputs are seeded random
values of the input's shape: latency does not depend on them.

    python bench/bench_prune.py RUN PRUNED_RUN [--threads 1] [--rounds 7]
    python bench/bench_prune.py RUN --keep 0.5          # prune in memory (as 'dnnspec prune', no fine-tuning)
    python bench/bench_prune.py RUN --keep 0.5 --quick  # 3 rounds of few calls: check that the script works
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnnspec import prune  # noqa: E402
from dnnspec.export.quantize import alternating_rounds, session_runner  # noqa: E402

BATCHES = {1: 200, 1024: 2}  # calls per turn at each batch size


def _models(args: argparse.Namespace) -> dict[str, tuple]:
    """{"original": (model, params), "pruned": (model, params)}, float32 arrays as export reads them."""
    from dnnspec.export.runs import load_source

    src = load_source(args.run)
    if args.pruned:
        other = load_source(args.pruned)
        return {"original": (src.model, src.params), "pruned": (other.model, other.params)}
    pr = prune.prune(src.model, src.params, args.keep)
    return {"original": (src.model, src.params), "pruned": (pr.model, pr.params)}


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def print_latency(onnx: dict[str, bytes], shape: tuple[int, ...], rounds: int, threads: int,
                  batches: dict[int, int]) -> None:
    rng = np.random.default_rng(0)
    for batch, calls in batches.items():
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        fns = {name: session_runner(data, x, threads) for name, data in onnx.items()}
        t = alternating_rounds(fns, rounds, calls, warmup=max(1, calls // 20))
        ratios = [p / o for p, o in zip(t["pruned"], t["original"], strict=True)]
        print(f"\nbatch {batch} ({calls} call{'s' * (calls > 1)} per turn, {rounds} rounds; time per call)")
        for r in range(rounds):
            print(f"  round {r + 1}: original {_time(t['original'][r])}, pruned {_time(t['pruned'][r])} "
                  f"({ratios[r]:.2f}x)")
        print(f"  median:  original {_time(statistics.median(t['original']))}, pruned "
              f"{_time(statistics.median(t['pruned']))} ({statistics.median(ratios):.2f}x)")


def main(argv: list[str] | None = None) -> int:
    from dnnspec.export.onnx_export import to_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", metavar="RUN", help="the original run folder (or model/checkpoint)")
    ap.add_argument("pruned", metavar="PRUNED_RUN", nargs="?", help="its pruned run (default: prune with --keep)")
    ap.add_argument("--keep", type=float, default=0.5, help="fraction kept when pruning in memory (default 0.5)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 rounds of few calls: check that the script works")
    args = ap.parse_args(argv)
    models = _models(args)
    onnx = {name: to_onnx(m, p).SerializeToString() for name, (m, p) in models.items()}
    print(f"{args.run}: onnxruntime CPU, {args.threads} intra-op thread(s)")
    for name, (m, _) in models.items():
        params, flops = prune.count(m)
        print(f"  {name:<9} {len(onnx[name]) / 1e6:7.3f} MB  {params:>10,} parameters  {flops:>13,} FLOPs/example")
    rounds = 3 if args.quick else args.rounds
    print_latency(onnx, models["original"][0].input.shape, rounds, args.threads,
                  {1: 20, 1024: 1} if args.quick else BATCHES)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
