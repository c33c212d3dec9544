"""Fuzz the front end (and the engine's forward pass) with mutants of the shipped specs.

Run: nice python bench/fuzz_specs.py [-n 100000] [--seed 0] [--timeout 2] [--save DIR]

Each mutant (tests/spec_mutants.py: truncation, token edits, huge / tiny / non-finite
numbers, option values at the edges of their ranges, deep nesting, odd bytes) is parsed
with ``dnnspec.frontend.parse``; one that checks OK and is small is compiled to an engine
``Net`` and run forward on a tiny random batch. A crash is any exception other than the
project's user-error types (``DnnspecError``), NaN or inf outputs from a spec that checks
OK, or a hang: a mutant still running after ``--timeout`` seconds of wall time (SIGALRM
interrupts it) that, run again, also takes more than ``--timeout`` seconds of CPU time (on
a shared machine a wall-clock overrun alone may only mean a busy machine; those are
counted apart). BLAS runs single-threaded, so CPU time is the mutant's own work. Prints
the counts and the time; exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: no BLAS threads spinning on a shared machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import spec_mutants  # noqa: E402  (tests/spec_mutants.py, after the path set-up)


class Hang(BaseException):
    """Raised by SIGALRM inside a mutant that runs past the timeout (a BaseException, so that
    run_mutant's ``except Exception`` for crashes does not take it for one)."""


def _alarm(signum, frame):
    raise Hang()


def timed_run(text: str, timeout: float) -> tuple[spec_mutants.Outcome, float, float]:
    """run_mutant under a SIGALRM timer: (outcome, wall seconds, CPU seconds); a Hang is a crash outcome."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        outcome = spec_mutants.run_mutant(text)
    except Hang:
        outcome = spec_mutants.Outcome("crash", detail=f"hang: still running after {timeout:g} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome, time.perf_counter() - start, time.process_time() - cpu


def confirmed_hang(text: str, timeout: float) -> tuple[spec_mutants.Outcome | None, float]:
    """Re-run a mutant that overran the wall clock with no timer: (its outcome, CPU seconds).

    Outcome None when its CPU time passes ``timeout`` too: a real hang (stopped at 10x).
    """
    signal.setitimer(signal.ITIMER_REAL, 10 * timeout)
    cpu = time.process_time()
    try:
        outcome = spec_mutants.run_mutant(text)
    except Hang:
        return None, time.process_time() - cpu
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    took = time.process_time() - cpu
    return (None if took > timeout else outcome), took


def fuzz(n: int, seed: int, timeout: float, save: Path | None, progress: bool) -> int:
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(seed)
    counts: collections.Counter[str] = collections.Counter()
    crashes: list[tuple[str, str]] = []
    start = time.perf_counter()
    for i in range(n):
        text = spec_mutants.mutant(rng)
        outcome, wall, _ = timed_run(text, timeout)
        if wall > timeout:  # interrupted, or slow but finished: a hang if it needs that much CPU too
            again, cpu = confirmed_hang(text, timeout)
            if again is None:
                outcome = spec_mutants.Outcome("crash", detail=f"hang: {cpu:.1f} s of CPU time")
            else:
                counts[f"over {timeout:g} s wall once, under {timeout:g} s CPU"] += 1
                outcome = again
        counts[outcome.kind + (" +forward" if outcome.forward else "")] += 1
        if outcome.kind == "crash":
            crashes.append((outcome.detail, text))
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"crash{len(crashes):04d}.dnn").write_text(text)
        if progress and (i + 1) % 10_000 == 0:
            print(f"  {i + 1:,} mutants, {len(crashes)} crashes, {time.perf_counter() - start:.0f} s", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{n:,} mutants (seed {seed}) in {elapsed:.1f} s ({n / elapsed:,.0f}/s): {len(crashes)} crashes")
    for kind, k in sorted(counts.items()):
        print(f"  {kind:48s} {k:>8,}")
    for detail, text in crashes[:5]:
        print("--- crash:", detail.strip().splitlines()[-1] if detail.strip() else detail)
        print(text[:400])
    return 1 if crashes else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="number of mutants (default 100,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds before a mutant counts as a hang")
    ap.add_argument("--save", type=Path, default=None, help="write each crashing mutant to this folder")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    return fuzz(args.n, args.seed, args.timeout, args.save, not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
