"""Timing shared by the bench scripts (imported from the script's own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(fn: Callable[[], object], calls: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``calls`` timed calls of ``fn()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
