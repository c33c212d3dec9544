"""Where local search trials run: worker processes forked from a fork server, with one thread each.

Kept apart from runner.py and light (the standard library only) so that ``dnnspec search``
can start the server before it imports anything heavy: the server's own imports (NumPy,
the engine, the compiled kernels, matplotlib; ~1 s) then overlap the command's imports
and the checking of every candidate, instead of delaying the first trial by that much.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Any

THREAD_VARS = ("DNNSPEC_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: What the fork server imports once for every worker (see :func:`context`): the trial's modules, then
#: ``preload`` (matplotlib warmed for the final curves.png; a quick exit: search/preload.py).
PRELOAD = ("numpy", "dnnspec.search.runner", "dnnspec.commands.train", "dnnspec.engine.fused_kernels",
           "dnnspec.search.preload")


def trial_env() -> dict[str, str]:
    """The variables a trial runs with: this process's ``DNNSPEC_*`` ones, then one BLAS and one engine thread
    (set before a trial's process imports NumPy)."""
    return {**{k: v for k, v in os.environ.items() if k.startswith("DNNSPEC_")}, **{k: "1" for k in THREAD_VARS}}


@contextlib.contextmanager
def single_threaded():
    """Workers inherit one thread each (set before they import NumPy); the caller's env is restored."""
    old = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update(trial_env())
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def has_server() -> bool:
    """Whether this system has the ``forkserver`` start method (POSIX)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def context() -> Any:
    """Where the workers come from: a fork server (POSIX) that imported the trial's modules once, else ``spawn``.

    Spawned workers each import NumPy, the engine, numba's kernels and matplotlib before their
    first trial (~0.6 s), all at once, where their cores are wanted; forked from a server that
    did it once they start in milliseconds (2 workers: a 16-trial search 0.5 s sooner, 1 worker
    unchanged). The server is a fresh process started from this one's environment inside
    :func:`single_threaded` (one BLAS thread), never a fork of this threaded process; a module
    it cannot import (an extra not installed) is skipped. It lives as long as this process,
    so each job carries the folder and ``DNNSPEC_*`` variables of its submission
    (runner._local_trial).
    """
    if not has_server():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_server() -> None:
    """Start the fork server now, if this system has one and it is not running: it imports PRELOAD while
    this process goes on (a search checks its candidates meanwhile). Returns at once."""
    if not has_server():
        return
    import multiprocessing.forkserver  # POSIX only: after the check

    with single_threaded():
        context()
        multiprocessing.forkserver.ensure_running()
