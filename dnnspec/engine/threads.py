"""The engine's own threads: memory-bound passes and GEMMs split over the CPU cores.

NumPy runs elementwise work (im2col, col2im, pooling masks, activations) on one core,
and BLAS threads its GEMMs itself. On a two-core machine that leaves the second core
idle for about half of a CNN training step, and splitting the elementwise passes over
Python threads (NumPy releases the GIL inside them) does not help while BLAS is
threaded: OpenBLAS's worker keeps spinning on the other core for a while after every
GEMM. So inside :func:`own_threads` BLAS runs single-threaded (through threadpoolctl)
and the engine splits both kinds of work itself, with one pool of ``threads() - 1``
workers plus the calling thread:

* :func:`parallel` runs ``fn(lo, hi)`` over pieces of a range (examples, channels);
* :func:`matmul` is ``np.matmul`` with the output split along its longest axis, or
  along the reduction axis with partial sums when the output is small;
* :func:`copy` is a layout-changing copy (optionally adding a broadcast array) split
  along axis 0.

Outside the context both run as plain single calls, so ops work the same in any
caller. Results do not depend on the thread count except through the order of the
partial sums of a reduction split (deterministic for a given thread count).
``$DNNSPEC_THREADS`` sets the count (1 turns all of this off).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: Below this many elements a pass runs in one piece (a hand-off to a worker costs ~20-50 us).
PARALLEL_MIN = 1 << 16
#: Below this many multiply-adds a matrix product runs in one call.
MATMUL_MIN = 1 << 21

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_active = 0  # depth of own_threads() contexts in effect
_controller: Any = None


def threads() -> int:
    """Threads for the engine: ``$DNNSPEC_THREADS``, else the CPUs this process may use (at most 8)."""
    env = os.environ.get("DNNSPEC_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _blas_controller() -> Any:
    """threadpoolctl's controller for the loaded BLAS libraries, or None without threadpoolctl."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller or None


@contextlib.contextmanager
def own_threads() -> Iterator[None]:
    """Single-threaded BLAS while the engine splits its work itself (see the module doc); nests."""
    global _active
    controller = _blas_controller() if threads() > 1 else None
    if controller is None:
        yield
        return
    with _lock:
        outer = _active == 0
        _active += 1
    try:
        if outer:
            with controller.limit(limits=1, user_api="blas"):
                yield
        else:
            yield
    finally:
        with _lock:
            _active -= 1


def active() -> bool:
    return _active > 0


def _forget_pool_after_fork() -> None:
    """In a forked child the pool's threads do not exist: start afresh (else a submit would wait forever)."""
    global _pool, _lock, _active
    _pool, _lock, _active = None, threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _workers(k: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < k - 1:
            _pool = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="dnnspec")
        return _pool


def parallel(fn: Callable[[int, int], Any], n: int, size: int) -> None:
    """Run ``fn(lo, hi)`` over ``[0, n)`` in contiguous pieces, one per thread, inside :func:`own_threads`.

    ``fn`` must write disjoint outputs for disjoint ranges, so that the result does not
    depend on the split. ``size``: elements the whole call touches; small calls, and all
    calls outside :func:`own_threads`, run as ``fn(0, n)``.
    """
    k = min(threads(), n) if _active and size >= PARALLEL_MIN else 1
    if k <= 1:
        fn(0, n)
        return
    parallel_pieces(fn, n, k)


def copy(out: np.ndarray, src: np.ndarray, add: np.ndarray | None = None) -> np.ndarray:
    """``out[...] = src`` (``+ add``, broadcast), split along axis 0 over the engine's threads.

    For the layout changes between ops (``src`` a transposed view), where one strided
    copy of the whole batch is a memory-bound pass worth splitting.
    """
    if add is None:
        parallel(lambda lo, hi: np.copyto(out[lo:hi], src[lo:hi]), len(out), out.size)
    else:
        parallel(lambda lo, hi: np.add(src[lo:hi], add, out=out[lo:hi]), len(out), out.size)
    return out


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, split over the engine's threads inside :func:`own_threads`.

    The output is split along its longest matrix axis (rows of ``a`` or columns of
    ``b``; views, no copies); when the reduction axis is 32 times longer than both
    output axes (a weight gradient such as ``(F, M) @ (M, K)`` with small F and K) the
    reduction is split instead, so that each thread reads its own part of both
    operands, and the partial products are added.
    """
    m, kdim, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.size // (m * n) if m * n else 0
    k = min(threads(), 8) if _active and batch * m * n * kdim >= MATMUL_MIN else 1
    if k <= 1:
        return np.matmul(a, b, out=out)
    if kdim < 32 * max(m, n):  # else the reduction is long next to the output: split it
        if m >= n:
            parallel_pieces(lambda lo, hi: np.matmul(a[..., lo:hi, :], b, out=out[..., lo:hi, :]), m, k)
        else:
            parallel_pieces(lambda lo, hi: np.matmul(a, b[..., lo:hi], out=out[..., lo:hi]), n, k)
        return out
    parts = [np.empty_like(out) for _ in range(k - 1)]
    targets = [out, *parts]

    def piece(i: int, lo: int, hi: int) -> None:
        np.matmul(a[..., lo:hi], b[..., lo:hi, :], out=targets[i])

    parallel_pieces(piece, kdim, k, indexed=True)
    for p in parts:
        out += p
    return out


def parallel_pieces(fn: Callable[..., Any], n: int, k: int, indexed: bool = False) -> None:
    """Like :func:`parallel` with exactly ``k`` pieces; ``indexed`` passes the piece number first."""
    bounds = [n * i // k for i in range(k + 1)]
    call = (lambda i: fn(i, bounds[i], bounds[i + 1])) if indexed else (lambda i: fn(bounds[i], bounds[i + 1]))
    pool = _workers(k)
    futures = [pool.submit(call, i) for i in range(1, k)]
    errors: list[BaseException] = []
    try:
        call(0)
    finally:  # never return while a piece still writes into the caller's buffers
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
    if errors:
        raise errors[0]


__all__ = ["MATMUL_MIN", "PARALLEL_MIN", "active", "copy", "matmul", "own_threads", "parallel", "threads"]
