"""Search throughput: trials per second with 1 and with K worker processes, in alternating rounds.

    python bench/bench_search.py [--rounds 3] [--workers 2] [--limit 20000] [--epochs 6] [--widths 64,128,192,256]

Each round runs ``dnnspec search`` twice on the same small space (a Fashion-MNIST MLP:
width x batch norm or not x learning rate, 16 candidates by default, grid), once with one worker and once with K, in an
order that alternates between rounds (the machine's speed drifts between minutes, so
per-round ratios, taken within a minute, are what to compare). Reported per round: wall
time of each command (start-up, checking, trials, leaderboard: what a user waits for),
trials per second, and the ratio K-workers / 1-worker; the median ratio is the figure
(target on a 2-core machine: at least 1.8x with 2 workers). Also checked: the two
leaderboards are the same file, byte for byte (trials are bit-reproducible whatever the
worker count). Uses random data of Fashion-MNIST's shape when the set is missing.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
network bench_search
data      {data}
input     image[1, 28, 28] scale=1/255
classes   10
layers {{
  flatten
  dense choice({widths})
  choose {{
    batchnorm
    none
  }}
  relu
  dense 10
  softmax
}}
optimizer adam lr=choice(0.003, 0.001)
train     epochs={epochs} batch=128 validation=0.1 seed=0
"""


def data_source(tmp: Path, limit: int) -> str:
    """The spec's data line: fashion-mnist where installed, else a random .npz of its shape."""
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        return "fashion-mnist"
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp / "random.npz"
    np.savez(path, x=rng.integers(0, 256, (limit, 1, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, limit))
    return f'"{path}"'


def search(spec: Path, out: Path, workers: int, limit: int) -> float:
    """Wall seconds of one ``dnnspec search`` command (grid over the whole space)."""
    cmd = [sys.executable, "-m", "dnnspec", "search", str(spec), "--strategy", "grid", "--workers", str(workers),
           "--out", str(out), "--limit", str(limit)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    secs = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench_search: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="K, compared with one worker")
    p.add_argument("--limit", type=int, default=20000, help="training images per trial")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    p.add_argument("--widths", default="64,128,192,256",
                   help="the hidden layer's widths (comma-separated); trials = 4 x their count")
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    trials = 4 * len(widths)
    ratios, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp_name:
        tmp = Path(tmp_name)
        spec = tmp / "space.dnn"
        spec.write_text(SPACE.format(data=data_source(tmp, args.limit), epochs=args.epochs,
                                     widths=", ".join(map(str, widths))))
        for r in range(args.rounds):
            order = (1, args.workers) if r % 2 == 0 else (args.workers, 1)
            secs = {k: search(spec, tmp / f"r{r}_w{k}", k, args.limit) for k in order}
            same = filecmp.cmp(tmp / f"r{r}_w1" / "leaderboard.csv", tmp / f"r{r}_w{args.workers}" / "leaderboard.csv",
                               shallow=False)
            ratio = secs[1] / secs[args.workers]
            ratios.append(ratio)
            rows.append((r + 1, secs[1], secs[args.workers], ratio, same))
    print(f"{trials} trials per search ({args.epochs} epochs of {args.limit} images each), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"round  1 worker (s)  {args.workers} workers (s)  trials/s 1 -> {args.workers}  speed-up  same leaderboard")
    for r, s1, sk, ratio, same in rows:
        print(f"{r:>5}  {s1:>12.1f}  {sk:>13.1f}  {trials / s1:>7.2f} -> {trials / sk:<7.2f}  {ratio:>7.2f}x  {same}")
    print(f"median speed-up with {args.workers} workers: {statistics.median(ratios):.2f}x "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x); target on 2 cores: >= 1.8x")
    return 0 if all(row[4] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
