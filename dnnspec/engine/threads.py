"""The engine's own threads: how many, chosen from the CPUs it may use and re-chosen as others compete.

NumPy runs elementwise work (im2col, col2im, pooling masks, activations) on one core,
and BLAS threads its GEMMs itself. OpenBLAS's workers spin on their core for a while
after every GEMM: with another process on that core this is ruinous (on the 2-core
machine under other users' load an MLP step took 20-100 times its quiet time). So inside
:func:`own_threads` BLAS runs single-threaded (through threadpoolctl) and the engine
splits its work itself over the workers of :mod:`dnnspec.engine.crew`, which spin only
briefly inside a pass:

* :func:`parallel` runs ``fn(lo, hi)`` over pieces of a range (examples, channels);
* :func:`matmul` is ``np.matmul`` cut into a fixed number of pieces (see below);
* :func:`copy` is a layout-changing copy (optionally adding a broadcast array) split along axis 0.

Networks without convolutions (MLPs) keep BLAS's own threads, whose GEMMs beat the split
ones there, inside :func:`blas_threads`: BLAS gets the CPU budget, and one thread fewer
while a neighbour takes a CPU (:class:`BlasGovernor`).

**How many threads.** The budget is the CPUs this process may really use
(:func:`dnnspec.engine.cpus.cpu_budget`: affinity mask and cgroup CPU quota, at most 8).
``$DNNSPEC_THREADS=N`` fixes the count at N. Otherwise a :class:`Governor` picks the
count among ``1, 2, 4, ...`` up to the budget between training steps (:func:`step`,
called by ``Net.loss_and_grads``), from the CPU time other processes take on our CPUs
(``/proc/stat``) and, where that leaves a choice, from measured step times.

**Results do not depend on the thread count**, so the governor may switch at any step:

* BLAS is single-threaded in the context whatever the count: OpenBLAS's sgemm gives
  different bits with 1 and 2 threads (and even for row pieces of one product);
* a matrix product is cut into :func:`pieces` parts whose bounds depend on the shapes
  and the CPU budget only (never on ``$DNNSPEC_THREADS`` or the governor); the threads
  share out whole pieces, each piece is the same BLAS call whoever runs it, and partial
  sums of a reduction split are added in piece order;
* :func:`parallel` pieces write disjoint outputs with elementwise operations, which give
  the same bits however the range is cut.

Outside the context everything runs as plain single calls.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import UsageError
from . import cpus
from .crew import Crew, run_job, training_started
from .crew import blas as crew_blas

ENV = "DNNSPEC_THREADS"
#: Below this many elements a pass runs in one piece (a hand-off to a worker costs ~20-50 us).
PARALLEL_MIN = 1 << 16
#: Below this many multiply-adds a matrix product runs in one call.
MATMUL_MIN = 1 << 21
#: At most this many threads, and this many pieces of a matrix product.
MAX_THREADS = 8
MAX_PIECES = 4

_crew: Crew | None = None
_lock = threading.Lock()
_depth = 0  # depth of own_threads() contexts in effect
_k = 1  # threads in use inside the context
_fixed: int | None = None  # $DNNSPEC_THREADS as read by the outermost context
_limit: Any = None  # threadpoolctl's BLAS limit while any context is held
_meter: cpus.CpuMeter | None = None
_controller: Any = None
_budget: int | None = None
_governor: Governor | None = None
# blas_threads(): the BLAS thread count of networks that keep BLAS's own threads (MLPs)
_bdepth = 0  # depth of blas_threads() contexts in effect
_bk: int | None = None  # the BLAS count blas_threads() set (None: BLAS's own default, untouched)
_bfixed: int | None = None  # $DNNSPEC_THREADS as read by the outermost blas_threads()
_blimit: Any = None  # threadpoolctl's limiter of the first change: restores BLAS's own count at the end
_blas_governor: BlasGovernor | None = None


def budget() -> int:
    """CPUs this process may use (affinity, cgroup quota; engine/cpus.py), at most MAX_THREADS; measured once."""
    global _budget
    if _budget is None:
        _budget = min(cpus.cpu_budget(), MAX_THREADS)
    return _budget


def requested() -> int | None:
    """``$DNNSPEC_THREADS`` as a count, or None when unset, empty or ``auto`` (the governor chooses)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"${ENV} is {os.environ[ENV]!r}; expected a whole number of threads >= 1, "
                         f"or auto (chosen from the CPUs this process may use)")
    return int(value)


def threads() -> int:
    """Threads in use: inside :func:`own_threads` the count in effect, inside :func:`blas_threads` BLAS's,
    else ``$DNNSPEC_THREADS`` or the budget."""
    if _depth:
        return _k
    if _bdepth and _bk is not None:
        return _bk
    return requested() or budget()


def pieces() -> int:
    """Pieces of a split matrix product: the CPU budget, at most MAX_PIECES (never ``$DNNSPEC_THREADS``).

    The count fixes the summation order of a reduction split and which rows or columns
    each BLAS call sees, so it must not follow the thread count; single-threaded, each
    extra piece costs 1-3 % more on the MLP's products (re-packing the other operand).
    """
    return min(budget(), MAX_PIECES)


def governor() -> Governor:
    """The process's governor (created on first use)."""
    global _governor
    if _governor is None:
        _governor = Governor(budget(), meter=meter())
    return _governor


def meter() -> cpus.CpuMeter:
    """The process's CpuMeter. Made when the engine is imported (and in a forked child at the fork), so
    that its first window spans the loading of the data: the first training step already knows
    whether others use the CPUs."""
    global _meter
    if _meter is None:
        _meter = cpus.CpuMeter()
    return _meter


def reset() -> None:
    """Forget what the governors have learnt (and the budget): the next context starts afresh (benchmarks, tests)."""
    global _governor, _budget, _blas_governor
    _governor, _budget, _blas_governor = None, None, None


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
    """Single-threaded BLAS while the engine splits its work itself (see the module doc); nests.

    The outermost entry (of any thread) fixes the thread count (``$DNNSPEC_THREADS`` or the
    governor's) and limits BLAS to one thread until the last context of any thread ends;
    :func:`step` may change the count between training steps.
    """
    global _depth, _k, _fixed, _limit
    with _lock:
        outer = _depth == 0
        fixed = requested() if outer else _fixed  # a bad value raises before anything changed
        _depth += 1
        if outer:
            _fixed = fixed
            _k = fixed or governor().start(threading.get_ident())
            controller = _blas_controller()
            _limit = controller.limit(limits=1, user_api="blas") if controller else None
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            depth = _depth
            if depth == 0 and _limit is not None:
                _limit.restore_original_limits()
                _limit = None
        _leave(depth)


def _leave(depth: int) -> None:
    """A context ends. Leaving a pass (depth <= 1: the trainer holds one around the epoch) the
    workers stop spinning: a spinning worker slows the caller's single-threaded work (the
    optimizer step, the next batch) where the two CPUs are SMT siblings. Leaving the
    outermost context stops the governor's clock."""
    if depth <= 1 and _crew is not None:
        _crew.cool()
    if depth == 0 and _governor is not None:
        _governor.stop()


@contextlib.contextmanager
def blas_threads() -> Iterator[None]:
    """BLAS threads its own GEMMs, as many as the CPUs we may use leave free (an MLP's passes; nests).

    The count is ``$DNNSPEC_THREADS`` when set, else the :class:`BlasGovernor`'s: the CPU
    budget, and fewer while a neighbour takes a CPU (OpenBLAS's threads wait for each other at
    every GEMM: beside one busy process an MLP epoch took 2-20 times its time with one thread).
    The outermost entry sets it (when it differs from BLAS's own count: a container limited to
    one CPU on a large host gets 1, not the host's cores), :func:`step` may change it between
    training steps, and the last exit restores BLAS's own count. Inside :func:`own_threads`
    BLAS stays single-threaded and this does nothing.
    """
    global _bdepth, _bfixed, _blimit, _bk
    with _lock:
        outer = _bdepth == 0
        fixed = requested() if outer else _bfixed  # a bad value raises before anything changed
        _bdepth += 1
        if outer:
            _bfixed = fixed
    try:
        if outer and not _depth:
            _set_blas(fixed or blas_governor().start(threading.get_ident()))
        yield
    finally:
        with _lock:
            _bdepth -= 1
            last = _bdepth == 0
        if last:
            if _blas_governor is not None:
                _blas_governor.stop()
            if _blimit is not None:
                _blimit.restore_original_limits()
            _blimit, _bk = None, None


def blas_governor() -> BlasGovernor:
    """The process's BLAS-thread governor (created on first use)."""
    global _blas_governor
    if _blas_governor is None:
        _blas_governor = BlasGovernor(budget(), meter=meter())
    return _blas_governor


def _current_blas() -> int | None:
    """The thread count of the BLAS libraries threadpoolctl found (~2 µs): one number, 0 when they differ
    (SciPy's OpenBLAS beside NumPy's), None when there is none."""
    controller = _blas_controller()
    counts = {lib["num_threads"] for lib in controller.info() if lib.get("user_api") == "blas"} if controller else set()
    return (counts.pop() if len(counts) == 1 else 0) if counts else None


def _set_blas(k: int) -> None:
    """BLAS to ``k`` threads (through threadpoolctl), unless it runs that many already; not inside own_threads."""
    global _bk, _blimit
    current = _bk if _bk is not None else _current_blas()
    if _depth or k == current or current is None:
        return
    limiter = _blas_controller().limit(limits=k, user_api="blas")
    if _blimit is None:
        _blimit = limiter  # its originals are BLAS's own count, restored when the last context ends
    _bk = k


def step() -> None:
    """Mark the start of a training step (``Net.loss_and_grads``): the governor's clock and switch point."""
    global _k
    if not _depth:
        if _bdepth and _bfixed is None and _blas_governor is not None:
            _set_blas(_blas_governor.step(threading.get_ident()))
        return
    if training_started() and _crew is not None:
        _crew.renew()  # machine-code workers from now on (crew.py); evaluation alone never loads numba
    if _governor is not None and _fixed is None:
        k = _governor.step(threading.get_ident())
        if k < _k and _crew is not None:
            _crew.cool(keep=k - 1)  # idle workers must not spin beside a busy neighbour
        _k = k
    if _k > 1:
        _workers().warm(_k - 1)  # awake (and spinning) by the first split of the pass


def active() -> bool:
    """Inside :func:`own_threads` with more than one thread: splitting a pass can pay."""
    return _depth > 0 and _k > 1


def _forget_pool_after_fork() -> None:
    """In a forked child the pool's threads do not exist: start afresh (else a submit would wait forever)."""
    global _crew, _lock, _depth, _k, _governor, _budget, _limit, _meter
    global _bdepth, _bk, _bfixed, _blimit, _blas_governor
    _crew, _lock, _depth, _k, _governor, _budget, _limit = None, threading.Lock(), 0, 1, None, None, None
    _bdepth, _bk, _bfixed, _blimit, _blas_governor = 0, None, None, None, None
    _meter = None
    meter()  # the child's CPU time starts at 0: a window from here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
meter()


def _workers() -> Crew:
    global _crew
    with _lock:
        if _crew is None:
            _crew = Crew()
        return _crew


def parallel(fn: Callable[[int, int], Any], n: int, size: int) -> None:
    """Run ``fn(lo, hi)`` over ``[0, n)`` in contiguous pieces, one per thread, inside :func:`own_threads`.

    ``fn`` must write disjoint outputs for disjoint ranges with elementwise operations, so
    that the result does not depend on the split. ``size``: elements the whole call
    touches; small calls, and all calls outside :func:`own_threads`, run as ``fn(0, n)``.
    """
    k = min(_k, n) if _depth and size >= PARALLEL_MIN else 1
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
    """``np.matmul(a, b, out=out)`` for ``a`` (..., M, K), ``b`` (..., K, N), in :func:`pieces` parts.

    Inside :func:`own_threads`, a product of at least MATMUL_MIN multiply-adds is cut
    along the longest output axis (rows of ``a`` or columns of ``b``; views, no copies),
    or, when the reduction axis K is 32 times longer than both output axes (a weight
    gradient such as ``(F, M) @ (M, K)`` with small F and K), along K, each piece into
    its own output, added in piece order. The cut depends on the shapes and ``pieces()``
    only; the threads in use share out the pieces, so the bits do not depend on them.
    2-D pieces go straight to BLAS (engine/crew.py), others through ``np.matmul``.
    """
    m, kdim, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.size // (m * n) if m * n else 0
    p = pieces() if _depth and batch * m * n * kdim >= MATMUL_MIN else 1
    if p <= 1:
        return np.matmul(a, b, out=out)
    targets = [out]
    if kdim >= 32 * max(m, n):  # the reduction is long next to the output: split it
        axis, cuts = "k", bounds(kdim, p)
        targets += [np.empty_like(out) for _ in range(p - 1)]
    else:
        axis, cuts = ("m", bounds(m, p)) if m >= n else ("n", bounds(n, p))
    direct = crew_blas().pieces(a, b, targets, axis, cuts)
    if direct is not None:  # every piece of a product takes the same path: the two may round differently
        jobs: list[Any] = [[row] for row in direct]
    else:
        jobs = [_matmul_job(a, b, targets, axis, i, lo, hi) for i, (lo, hi) in enumerate(cuts)]
    _run_pieces(jobs, p, _k)
    for part in targets[1:]:
        out += part
    return out


def _matmul_job(a: np.ndarray, b: np.ndarray, targets: list[np.ndarray], axis: str, i: int, lo: int,
                hi: int) -> Callable[[], Any]:
    """``np.matmul`` of part ``i`` (``lo:hi`` along ``axis``) as a call."""
    if axis == "k":
        return lambda: np.matmul(a[..., lo:hi], b[..., lo:hi, :], out=targets[i])
    if axis == "m":
        return lambda: np.matmul(a[..., lo:hi, :], b, out=targets[0][..., lo:hi, :])
    return lambda: np.matmul(a, b[..., lo:hi], out=targets[0][..., lo:hi])


def bounds(n: int, p: int) -> list[tuple[int, int]]:
    """``p`` contiguous pieces of ``[0, n)``, as even as integers allow."""
    return [(n * i // p, n * (i + 1) // p) for i in range(p)]


def _run_pieces(jobs: list[Any], p: int, k: int) -> None:
    """Run ``p`` jobs on ``k`` threads: thread ``j`` takes jobs ``j, j + k, ...``."""
    k = max(1, min(k, p))
    shares = [_merge(jobs[j::k]) for j in range(k)]
    if k == 1:
        run_job(shares[0])
    else:
        _workers().run(shares)


def _merge(jobs: list[Any]) -> Any:
    """Several jobs as one: GEMM piece lists joined, Python calls chained."""
    if all(not callable(j) for j in jobs):
        return [piece for j in jobs for piece in j]
    return lambda: [run_job(j) for j in jobs]


def parallel_pieces(fn: Callable[..., Any], n: int, p: int, k: int | None = None, indexed: bool = False) -> None:
    """``fn`` over ``[0, n)`` cut into exactly ``p`` pieces, run by ``k`` threads (default ``p``).

    Thread ``j`` runs pieces ``j, j + k, ...``; the caller runs thread 0's. ``indexed``
    passes the piece number first.
    """
    cuts = bounds(n, p)
    if indexed:
        jobs = [(lambda i=i, lo=lo, hi=hi: fn(i, lo, hi)) for i, (lo, hi) in enumerate(cuts)]
    else:
        jobs = [(lambda lo=lo, hi=hi: fn(lo, hi)) for lo, hi in cuts]
    _run_pieces(jobs, p, p if k is None else k)


# --- choosing the count -----------------------------------------------------------------


def levels(top: int) -> list[int]:
    """The counts the governor chooses among: top, top/2, top/4, ..., 1 (ascending)."""
    out = {top}
    while top > 1:
        top //= 2
        out.add(top)
    return sorted(out)


class Governor:
    """Picks the thread count from the CPUs other processes take and from the times of training steps.

    Every PERIOD seconds of steps (:func:`step` marks) it asks its
    :class:`~dnnspec.engine.cpus.CpuMeter` how much CPU time others took on our CPUs::

        free = min(budget, ncpus - others)

    * others < QUIET: every CPU of the budget, no probing (a quiet machine pays nothing);
    * ``k`` above ``free + SLACK`` drops at once to the largest count within it (the cap):
      a worker with no CPU of its own waits for a neighbour's time slice at hand-offs;
    * probes compare counts by measured step time: after WINDOW steps at ``k``, and then
      every ``gap`` seconds, PROBE_STEPS steps (and at least PROBE_S seconds) at a
      neighbouring count; the lower median step time wins by more than MARGIN, and ``gap``
      doubles up to MAX_GAP while ``k`` holds. A probe step slower than ABORT times the
      median at ``k`` ends the probe at once. A count above the cap is probed only every
      MAX_GAP seconds, and a count a probe chose stays (the meter no longer pushes it
      down) until others change by SLACK: under CFS more threads also get more of a
      crowded machine, which is worth it when the passes are long (a CNN's).

    A median at ``k`` that rises by CHANGE (a neighbour arrived) samples the CPUs at once.
    The meter is made when the engine is imported, so its first answer usually comes at
    the first :meth:`start`; else the governor runs one thread and asks at every step
    until it answers (~50 ms of jiffies). Without a meter (no ``/proc/stat``) it starts
    at the budget and relies on probes alone.
    """

    PERIOD, MIN_GAP, MAX_GAP = 0.25, 0.25, 4.0
    PROBE_STEPS, PROBE_S = 3, 0.03
    WINDOW = 9  # steps at k compared with a probe, and for the change test
    MARGIN, CHANGE, ABORT, QUIET, SLACK = 0.04, 0.3, 2.0, 0.25, 0.5

    def __init__(self, top: int, clock: Callable[[], float] = time.perf_counter, meter: Any = None):
        self.levels = levels(max(1, top))
        self.top = self.levels[-1]
        self.clock = clock
        self.meter = meter if meter is not None else (cpus.CpuMeter() if self.top > 1 else None)
        self.blind = self.meter is None or self.meter.last is None  # no /proc/stat: probes alone decide
        self.k = self.home = self.top if self.blind else self.levels[0]
        self.sampled = False  # a first answer from the meter comes after MIN_WINDOW (~50 ms)
        self.cap, self.quiet, self.others = self.top, False, 0.0
        self.trusted: tuple[int, float] | None = None  # (count a probe chose, others then)
        self.owner: int | None = None
        self.last: float | None = None
        self.recent: deque[float] = deque(maxlen=self.WINDOW)
        self.probe: list[float] = []
        self.probing: int | None = None
        self.since_sample = self.since_probe = self.gap = 0.0
        self.ref: float | None = None
        self.turn = 0  # alternates the probe's direction where there are two neighbours
        self.history: list[tuple[str, int, float, float]] = []  # (event, count, median at home, probe's/others)
        self.steps = dict.fromkeys(self.levels, 0)  # training steps run at each count

    def start(self, owner: int) -> int:
        """An outermost context begins (an epoch): the count to run at; steps are timed from the first mark."""
        self.owner, self.last = owner, None
        if not (self.sampled or self.blind):
            self._sample(False)  # the meter's window may be long enough already (see threads.meter)
        return self.k

    def stop(self) -> None:
        self.owner, self.last = None, None  # the time between contexts (validation, checkpoints) is no step

    def step(self, owner: int) -> int:
        """A training step begins: record the last one's time, maybe switch; the count for this step."""
        if owner != self.owner or self.top == 1:
            return self.k
        now = self.clock()
        if self.last is not None:
            self._record(now - self.last)
        self.last = now
        self.steps[self.k] += 1
        return self.k

    def _record(self, dt: float) -> None:
        if self.probing is not None:
            self.probe.append(dt)
            slow = dt > self.ABORT * statistics.median(self.recent)
            if slow or (len(self.probe) >= self.PROBE_STEPS and sum(self.probe) >= self.PROBE_S):
                self._decide()
            return
        self.recent.append(dt)
        self.since_sample += dt
        self.since_probe += dt
        full = len(self.recent) == self.WINDOW
        if full and self.ref is None:
            self.ref = statistics.median(self.recent)
        changed = full and self.ref is not None and statistics.median(self.recent) > self.ref * (1 + self.CHANGE)
        if changed or self.since_sample >= self.PERIOD or not (self.sampled or self.blind):
            self._sample(changed)
        if full and (self.sampled or self.blind) and not self.quiet and len(self.levels) > 1:
            target = self._probe_target()
            if target is not None:
                self._start_probe(target)

    def _sample(self, changed: bool) -> None:
        """Ask the meter; set ``cap`` and ``quiet``, and move ``k`` where it must."""
        others = self.meter.sample() if self.meter is not None else None
        if others is None:
            if changed:
                self.ref, self.since_probe = None, self.gap  # no answer yet: let a probe decide
            return
        self.since_sample, self.sampled, self.others = 0.0, True, others
        free = min(self.top, self.meter.ncpus - others)
        self.quiet = others < self.QUIET
        self.cap = max([n for n in self.levels if n <= free + self.SLACK] or self.levels[:1])
        if self.trusted is not None and (self.quiet or abs(others - self.trusted[1]) > self.SLACK):
            self.trusted = None  # the machine changed since the probe: the meter rules again
        target = self.k
        if self.quiet:
            target = self.top
        elif self.k > self.cap and (self.trusted is None or self.trusted[0] != self.k):
            target = self.cap
        if target != self.k:
            self.history.append(("quiet" if self.quiet else "busy", target, 0.0, others))
            self.k = self.home = target
            self.recent.clear()
            self.ref, self.since_probe, self.gap = None, 0.0, self.MIN_GAP
        elif changed:
            self.ref, self.since_probe = None, self.gap

    def _probe_target(self) -> int | None:
        """The neighbouring count to probe now, or None: within the cap every ``gap``, above it every MAX_GAP."""
        i = self.levels.index(self.k)
        options = [self.levels[j] for j in (i - 1, i + 1) if 0 <= j < len(self.levels)]
        due = [n for n in options if self.since_probe >= (self.gap if n <= self.cap else self.MAX_GAP)]
        if not due:
            return None
        self.turn += 1
        return due[self.turn % len(due)]

    def _start_probe(self, target: int) -> None:
        self.home, self.probing = self.k, target
        self.k, self.probe = target, []

    def _decide(self) -> None:
        home, probe = statistics.median(self.recent), statistics.median(self.probe)
        if len(self.probe) >= self.PROBE_STEPS and probe < home * (1 - self.MARGIN):
            self.history.append(("switch", self.probing, home, probe))
            self.k, self.ref, self.gap = self.probing, probe, self.MIN_GAP
            self.trusted = (self.k, self.others)
            self.recent = deque(self.probe, maxlen=self.WINDOW)
        else:
            self.history.append(("stay", self.home, home, probe))
            self.k, self.ref, self.gap = self.home, home, min(max(self.gap, self.MIN_GAP) * 2, self.MAX_GAP)
        self.probing, self.since_probe = None, 0.0


class BlasGovernor:
    """The BLAS thread count of a network that keeps BLAS's own threads (an MLP; :func:`blas_threads`).

    It asks its :class:`~dnnspec.engine.cpus.CpuMeter` how much CPU time others took on our
    CPUs, ``free = min(budget, ncpus - others)``, at the first training step of a context (the
    window then spans what came just before: loading data, the last validation; a window over
    STALE seconds may mix a neighbour long gone with the present, so it only takes a thread away,
    and only when others took more than STALE_BUSY of a CPU throughout), FIRST seconds into the
    steps and every PERIOD seconds of steps after, and:

    * drops to ``floor(free + DOWN)`` threads when that is fewer than now: with the defaults,
      from 2 to 1 on a 2-CPU budget once others take more than half a CPU (a neighbour busy
      beside OpenBLAS's two spinning threads gets only ~0.6-0.7 of its core, so this must
      stay well under 1);
    * comes back up to ``floor(free + UP)`` when that is more: to 2 once others take less
      than a quarter of a CPU. Between the two nothing moves: a load that hovers does not
      flip the count.

    It starts at the budget (as BLAS's own threads did) and never probes: OpenBLAS's sgemm
    rounds differently with 1 and 2 threads, so every switch changes the last bits of the run.
    A run on a machine where others stay under half a CPU runs the budget throughout and
    reproduces bit for bit; one that met a busy neighbour does not (``$DNNSPEC_THREADS`` fixes
    the count, and the bits).
    """

    FIRST, PERIOD, STALE, STALE_BUSY, DOWN, UP = 0.05, 0.25, 1.0, 0.75, 0.5, 0.25

    def __init__(self, top: int, clock: Callable[[], float] = time.perf_counter, meter: Any = None):
        self.top = max(1, top)
        self.clock = clock
        self.meter = meter if meter is not None else (cpus.CpuMeter() if self.top > 1 else None)
        self.k = self.top
        self.owner: int | None = None
        self.last: float | None = None
        self.since_sample, self.wait, self.fresh = 0.0, self.FIRST, True
        self.others = 0.0
        self.history: list[tuple[int, float]] = []  # (new count, others then)
        self.steps: dict[int, int] = {}  # training steps run at each count

    def start(self, owner: int) -> int:
        """An outermost context begins (an epoch, or an evaluation): the count to run at (no reading here)."""
        self.owner, self.last, self.fresh = owner, None, True
        return self.k

    def stop(self) -> None:
        self.owner, self.last = None, None  # the time between contexts (validation, checkpoints) is no step

    def step(self, owner: int) -> int:
        """A training step begins: count the last one's time, ask the meter when due; the count for this step."""
        if owner != self.owner or self.top == 1 or self.meter is None:
            return self.k
        if self.fresh:  # the first step of a context: the window before it, unless stale
            self.fresh, self.since_sample, self.wait = False, 0.0, self.FIRST
            window = self.meter.window()
            self._sample(stale=window is not None and window > self.STALE)
        now = self.clock()
        if self.last is not None:
            self.since_sample += now - self.last
        self.last = now
        if self.since_sample >= self.wait:
            self._sample()
        self.steps[self.k] = self.steps.get(self.k, 0) + 1
        return self.k

    def _sample(self, stale: bool = False) -> None:
        """Ask the meter and move the count. A ``stale`` window only moves it down, and only for a neighbour
        that took most of a CPU throughout (STALE_BUSY); the next answer then comes FIRST s later."""
        others = self.meter.sample()
        if others is None:  # too soon after the last sample (or no /proc/stat): ask again at the next step
            return
        if stale:
            if others <= self.STALE_BUSY:
                return  # the window restarted: the first answer of our own comes FIRST seconds into the steps
        self.since_sample, self.wait, self.others = 0.0, self.wait if stale else self.PERIOD, others
        free = min(self.top, self.meter.ncpus - others)
        down, up = math.floor(free + self.DOWN), math.floor(free + self.UP)
        k = max(1, min(self.top, down if down < self.k else self.k if stale else max(up, self.k)))
        if k != self.k:
            self.history.append((k, others))
            self.k = k

__all__ = ["ENV", "MATMUL_MIN", "PARALLEL_MIN", "BlasGovernor", "Governor", "active", "blas_governor",
           "blas_threads", "budget", "copy", "governor",
           "levels", "matmul", "own_threads", "parallel", "pieces", "requested", "reset", "step", "threads"]
