"""Front-end speed: parse+check of a 200-layer spec (target < 50 ms) and `dnnspec check` wall time (< 0.3 s).

Run: python bench/bench_parse.py [--runs N]. Prints the median of N runs of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from timing import time_calls  # bench/timing.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spec_200_layers() -> str:
    """A spec with 200 layers written out (50 x dense, batchnorm, relu, dropout), no repeat."""
    body = "".join("  dense 64 init=he_normal\n  batchnorm momentum=0.9\n  relu\n  dropout 0.1\n" for _ in range(50))
    return (f"network deep\ninput [784] scale=1/255\nnormalize auto\nclasses 10\nlayers {{\n{body}"
            "  dense 10\n  softmax\n}\noptimizer adam lr=1e-3\ntrain epochs=2 batch=64\n")


def time_parse(runs: int) -> float:
    from dnnspec import frontend

    text = spec_200_layers()
    assert len(frontend.parse(text).layers) == 202  # builds the Lark parser once, as a long-running process would
    return statistics.median(time_calls(lambda: frontend.parse(text), runs))


def time_cli(runs: int) -> float:
    spec = str(ROOT / "specs" / "spirals.dnn")
    return statistics.median(time_calls(lambda: subprocess.run(
        [sys.executable, "-m", "dnnspec", "check", spec], cwd=ROOT, check=True, stdout=subprocess.DEVNULL), runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    p = time_parse(args.runs)
    print(f"parse+check 202-layer spec: median {p * 1000:.1f} ms over {args.runs} runs (target < 50 ms)")
    c = time_cli(args.runs)
    print(f"dnnspec check specs/spirals.dnn: median {c:.3f} s wall over {args.runs} runs (target < 0.3 s)")


if __name__ == "__main__":
    main()
