"""Search throughput: trials per second with 1 and with K worker processes, in alternating rounds.

    python bench/bench_search.py [--rounds 3] [--workers 2] [--limit 20000] [--epochs 6] [--widths 64,128,192,256]
                                 [--pair]

Each round runs ``dnnspec search`` twice on the same small space (a Fashion-MNIST MLP:
width x batch norm or not x learning rate, 16 candidates by default, grid), once with one worker and once with K, in an
order that alternates between rounds (the machine's speed drifts between minutes, so
per-round ratios, taken within a minute, are what to compare). Reported per round: wall
time of each command (start-up, checking, trials, leaderboard: what a user waits for),
trials per second, and the ratio K-workers / 1-worker; the median ratio is the figure
(target on a 2-core machine: at least 1.8x with 2 workers). Also checked: the two
leaderboards are the same file, byte for byte (trials are bit-reproducible whatever the
worker count). Uses random data of Fashion-MNIST's shape when the set is missing.

``--pair`` first measures the machine's ceiling: one ``dnnspec train`` of the space's costliest
candidate alone against two at once, as trials run (one thread each), in alternating rounds.
Where two cores share a cache or memory bandwidth that one process nearly fills, two
independent trials get less than 2x, and so does the search.
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


def pair(spec: Path, tmp: Path, limit: int, rounds: int) -> list[float]:
    """The machine's own ceiling: one ``dnnspec train`` of a trial alone, then two at once, in alternating order.

    Each is a candidate of the space (the widest, with batch norm) trained as a trial is (one BLAS and
    one engine thread); the figure per round is 2 x alone / together, the speed-up that two
    independent trials get from two cores here (start-up included, as each trial's is not).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from dnnspec.search import runner, space

    sp = space.read(spec.read_text(), str(spec))
    cands = runner.check_all(sp, runner.pick(sp, "grid", 10_000, 0))
    widest = max((c for c in cands if c.problem is None), key=lambda c: (c.flops, c.params))
    one = tmp / "pair.dnn"
    one.write_text(widest.text)
    env = {**os.environ, **runner.trial_env()}

    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "dnnspec", "train", str(one), "--limit", str(limit), "--out", str(tmp / out),
                "--overwrite", "--progress", "none"]

    def alone() -> float:
        t = time.perf_counter()
        subprocess.run(cmd("alone"), env=env, capture_output=True, check=True, timeout=900)
        return time.perf_counter() - t

    def together() -> float:
        t = time.perf_counter()
        procs = [subprocess.Popen(cmd(f"pair{i}"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(2)]
        if any(p.wait(timeout=900) for p in procs):
            sys.exit("bench_search --pair: a training failed")
        return time.perf_counter() - t

    ratios = []
    for r in range(rounds):
        secs = {}
        for name in (("alone", "together") if r % 2 == 0 else ("together", "alone")):
            secs[name] = alone() if name == "alone" else together()
        ratios.append(2 * secs["alone"] / secs["together"])
        print(f"pair round {r + 1}: one alone {secs['alone']:.1f} s, two at once {secs['together']:.1f} s "
              f"-> {ratios[-1]:.2f}x", flush=True)
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="K, compared with one worker")
    p.add_argument("--limit", type=int, default=20000, help="training images per trial")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    p.add_argument("--widths", default="64,128,192,256",
                   help="the hidden layer's widths (comma-separated); trials = 4 x their count")
    p.add_argument("--pair", action="store_true",
                   help="first measure what two independent trials at once get from the cores (the ceiling)")
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    trials = 4 * len(widths)
    ratios, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp_name:
        tmp = Path(tmp_name)
        spec = tmp / "space.dnn"
        spec.write_text(SPACE.format(data=data_source(tmp, args.limit), epochs=args.epochs,
                                     widths=", ".join(map(str, widths))))
        if args.pair:
            ceiling = pair(spec, tmp, args.limit, args.rounds)
            print(f"two independent trials side by side: median {statistics.median(ceiling):.2f}x "
                  f"(rounds {min(ceiling):.2f}-{max(ceiling):.2f}x): what the search's 2 workers can approach here",
                  flush=True)
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
