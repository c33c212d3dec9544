"""Worker threads for the engine's split work, with hand-offs of microseconds inside a pass.

A hand-off through ``concurrent.futures`` costs 30-75 us on this project's machine (a
worker asleep on a futex is woken by the kernel, on a virtual machine through the
hypervisor), and a Python worker needs the GIL after waking, which costs another 10-30
us whenever the caller holds it. An MLP's products last 70-400 us: those hand-offs ate
the gain of a second thread. OpenBLAS's workers spin instead, for a long time, which is
ruinous once another process wants the core. Here:

* GEMM pieces go straight to the BLAS library NumPy uses (``cblas_sgemm``/``dgemm``
  through ctypes, :class:`Blas`);
* with numba installed (the ``fast`` extra) a worker is a loop in machine code that
  never takes the GIL (:mod:`dnnspec.engine.crew_kernels`): it runs GEMM pieces itself
  and hands Python pieces back to its Python thread. It waits on a POSIX semaphore,
  spinning on ``sem_trywait`` for about SPIN_SECONDS first and then sleeping, and so does
  the caller waiting for it: inside a pass a hand-off costs ~2 us, and next to a busy
  neighbour nobody spins for long. :meth:`Crew.warm` wakes the workers ahead of a pass
  and :meth:`Crew.cool` sends them to sleep at once after it (a spinning SMT sibling
  slows the caller's single-threaded work);
* without numba (or glibc, or a BLAS with the ILP64 ``cblas_?gemm64_`` names) workers
  are Python threads on ``threading.Semaphore``: correct, but every hand-off sleeps.

A piece's exception is re-raised in the caller after every piece has finished: no piece
may still write into the caller's buffers when :meth:`Crew.run` returns.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

STOP, GEMM, PYTHON, NAP = 0, 1, 2, 3  # task codes (slot 0 of a worker's task block)
SPIN_SECONDS = 200e-6  # how long a waiting native worker (or caller) tries before it sleeps
PIECE = 14  # int64 slots of one GEMM piece: dtype, transA, transB, M, N, K, A, lda, B, ldb, C, ldc (+2 spare)
MAX_GEMMS = 8  # GEMM pieces one task block holds
_NO_TRANS, _TRANS = 111, 112  # CBLAS_TRANSPOSE


def _libc_functions() -> dict[str, int] | None:
    """Addresses of glibc's sem_init/sem_trywait/sem_wait/sem_post, or None."""
    try:
        libc = ctypes.CDLL(None)
        return {name: _address(getattr(libc, name)) for name in ("sem_init", "sem_trywait", "sem_wait", "sem_post")}
    except (OSError, AttributeError):
        return None


class Blas:
    """``cblas_sgemm``/``cblas_dgemm`` of the BLAS library NumPy loaded, called directly (int64 interface).

    Only libraries that export the ``64_``-suffixed ILP64 names (NumPy's own wheels:
    ``scipy_cblas_sgemm64_``) are used, so that the integer width is known; elsewhere
    ``ok`` is False and GEMM pieces are plain ``np.matmul`` calls.
    """

    NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")

    def __init__(self) -> None:
        self.fns: dict[int, Any] = {}
        self.addresses = (0, 0)
        for path in self._paths():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for name in self.NAMES:
                try:
                    s, d = getattr(lib, name.format("s")), getattr(lib, name.format("d"))
                except AttributeError:
                    continue
                self.fns = {0: self._typed(s, ctypes.c_float), 1: self._typed(d, ctypes.c_double)}
                self.addresses = (_address(s), _address(d))
                return

    @staticmethod
    def _paths() -> list[str]:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return []
        return [lib.filepath for lib in ThreadpoolController().select(user_api="blas").lib_controllers]

    @staticmethod
    def _typed(fn: Any, real: Any) -> Any:
        i32, i64 = ctypes.c_int, ctypes.c_int64
        fn.argtypes = [i32, i32, i32, i64, i64, i64, real, i64, i64, i64, i64, real, i64, i64]
        fn.restype = None
        return fn

    @property
    def ok(self) -> bool:
        return bool(self.fns)

    def pieces(self, a: np.ndarray, b: np.ndarray, outs: list[np.ndarray], axis: str,
               bounds: list[tuple[int, int]]) -> list[list[int]] | None:
        """PIECE integers for each part of ``outs[0] = a @ b`` cut along ``axis``, or None when it needs NumPy.

        ``axis`` "m" cuts rows of ``a`` and ``out``, "n" columns of ``b`` and ``out``, "k"
        the reduction, part ``i`` into ``outs[i]``. The arrays: 2-D, one float dtype;
        ``a`` and ``b`` each with one unit stride (a row-major block or the transpose of
        one), each out with C-ordered rows. Pointers of the parts are offsets from the
        whole arrays' (one ``.ctypes.data`` per array: it costs ~1.5 us).
        """
        if not self.ok or a.ndim != 2 or b.ndim != 2 or 0 in a.shape + b.shape:
            return None
        dtype = a.dtype
        if dtype not in (np.float32, np.float64) or b.dtype != dtype:
            return None
        if not all(o.ndim == 2 and o.dtype == dtype and o.flags.writeable and o.flags.aligned for o in outs):
            return None
        ta, tb, tcs = _layout(a), _layout(b), [_layout(o) for o in outs]
        if ta is None or tb is None or not a.flags.aligned or not b.flags.aligned \
                or any(t is None or t[0] != _NO_TRANS for t in tcs):
            return None
        m, k, n, f = a.shape[0], a.shape[1], b.shape[1], int(dtype == np.float64)
        pa, pb, pcs = a.ctypes.data, b.ctypes.data, [o.ctypes.data for o in outs]
        (sa0, sa1), (sb0, sb1), (sc0, sc1) = a.strides, b.strides, outs[0].strides
        ldc = tcs[0][1]
        rows = []
        for i, (lo, hi) in enumerate(bounds):
            if axis == "m":
                rows.append([f, ta[0], tb[0], hi - lo, n, k, pa + lo * sa0, ta[1], pb, tb[1], pcs[0] + lo * sc0, ldc])
            elif axis == "n":
                rows.append([f, ta[0], tb[0], m, hi - lo, k, pa, ta[1], pb + lo * sb1, tb[1], pcs[0] + lo * sc1, ldc])
            else:
                rows.append([f, ta[0], tb[0], m, n, hi - lo, pa + lo * sa1, ta[1], pb + lo * sb0, tb[1], pcs[i],
                             tcs[i][1]])
        return [r + [0, 0] for r in rows]

    def call(self, piece: list[int]) -> None:
        """Run one piece in this thread (ctypes releases the GIL for the call)."""
        dtype, ta, tb, m, n, k, a, lda, b, ldb, c, ldc = piece[:12]
        self.fns[dtype](101, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)


def _layout(x: np.ndarray) -> tuple[int, int] | None:
    """(CBLAS_TRANSPOSE, leading dimension) of a 2-D row-major operand, or None when BLAS cannot read it."""
    size = x.itemsize
    (r, c), (sr, sc) = x.shape, x.strides
    if sc == size and sr % size == 0 and sr // size >= max(1, c):
        return _NO_TRANS, sr // size
    if sr == size and sc % size == 0 and sc // size >= max(1, r):
        return _TRANS, sc // size
    if r == 1 and sc == size:  # one row: any row stride will do
        return _NO_TRANS, max(1, c)
    return None


_blas: Blas | None = None


def blas() -> Blas:
    """The process's direct BLAS (looked up once)."""
    global _blas
    if _blas is None:
        _blas = Blas()
    return _blas


def _address(fn: Any) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


class Native:
    """The machine-code side: crew_kernels' functions and the C addresses they call, or ``ok`` False."""

    def __init__(self) -> None:
        self.ok = False
        libc = _libc_functions()
        if libc is None or not blas().ok:
            return
        try:
            from . import crew_kernels
        except Exception:  # noqa: BLE001 - no numba (or one that does not fit): Python workers
            return
        self.k = crew_kernels
        self.fns = np.array([libc["sem_trywait"], libc["sem_wait"], libc["sem_post"], *blas().addresses], np.int64)
        self.sem_init = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_uint)(libc["sem_init"])
        self.sem_post = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64)(libc["sem_post"])
        self.spins = self._calibrate()
        self.ok = True

    def _calibrate(self) -> int:
        """``sem_trywait`` tries that last about SPIN_SECONDS here."""
        import time

        sems = self.semaphores()
        n = 20000
        self.k.spin_cost(sems.ctypes.data, self.fns, 10)  # compile (or load) first
        t0 = time.perf_counter()
        self.k.spin_cost(sems.ctypes.data, self.fns, n)
        per_try = max((time.perf_counter() - t0) / n, 1e-9)
        return int(min(max(SPIN_SECONDS / per_try, 100), 1_000_000))

    def semaphores(self) -> np.ndarray:
        """Two sem_t (32 bytes each on glibc; 64 reserved) at 0, in an 8-byte aligned buffer."""
        cells = np.zeros(16, np.int64)
        for i in (0, 8):
            self.sem_init(cells.ctypes.data + 8 * i, 0, 0)
        return cells


_native: Native | None = None
_training = False  # machine-code workers only once training began: evaluation never imports numba


def native() -> Native:
    global _native
    if _native is None:
        _native = Native()
    return _native


def training_started() -> bool:
    """Training began (the first training step): new workers may be machine-code ones. True the first time."""
    global _training
    first, _training = not _training, True
    return first


Job = Callable[[], Any] | list[list[int]]  # a Python call, or GEMM pieces for Blas


def run_job(job: Job) -> None:
    """Run a job in the calling thread: GEMM pieces in one machine-code call once workers loaded numba,
    else one ctypes call each (the same cblas calls, so the same bits; single-threaded runs never
    import numba for this)."""
    if callable(job):
        job()
    elif _native is not None and _native.ok:
        _native.k.gemms(np.asarray(job, np.int64), _native.fns)
    else:
        for piece in job:
            blas().call(piece)


class Worker:
    """One thread running the jobs it is given (see the module doc); every post is answered once."""

    def __init__(self) -> None:
        self.block = np.zeros(2 + PIECE * MAX_GEMMS, np.int64)
        self.native = native() if _training and native().ok else None
        if self.native is not None:
            self.cells = self.native.semaphores()
            self.ready, self.done = self.cells.ctypes.data, self.cells.ctypes.data + 64
        else:
            self.sems = threading.Semaphore(0), threading.Semaphore(0)
        self.unanswered = 0  # posts whose answer the caller has not collected yet
        self.dead = False
        self.task: Any = None
        self.error: BaseException | None = None
        threading.Thread(target=self._loop, name="dnnspec-worker", daemon=True).start()

    def _post(self) -> None:
        if self.native is not None:
            self.native.sem_post(self.ready)
        else:
            self.sems[0].release()
        self.unanswered += 1

    def _collect(self) -> None:
        """Wait for every answer still owed (at most one job's)."""
        while self.unanswered:
            if self.native is not None:
                self.native.k.wait(self.done, self.native.fns, self.native.spins)
            else:
                self.sems[1].acquire()
            self.unanswered -= 1

    def _answer(self) -> None:
        if self.native is not None:
            self.native.sem_post(self.done)
        else:
            self.sems[1].release()

    def _loop(self) -> None:
        while True:
            try:
                code = self._next()
            except BaseException as e:  # noqa: BLE001 - cannot happen unless serve breaks: answer, then end
                self.error, self.dead = e, True
                self._answer()
                return
            try:
                if code == PYTHON:
                    self.task()
                elif code == GEMM:  # Python worker: one direct call after another
                    n = int(self.block[1])
                    for row in self.block[2:2 + PIECE * n].reshape(n, PIECE).tolist():
                        blas().call(row)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.error = e
            self._answer()
            if code == STOP:
                return

    def _next(self) -> int:
        """Wait for the next job; GEMM jobs and naps are handled inside ``serve`` when it is there."""
        if self.native is not None:
            return int(self.native.k.serve(self.block, self.ready, self.done, self.native.fns, self.native.spins))
        self.sems[0].acquire()
        return int(self.block[0])

    def send(self, code: int) -> None:
        """Post a job-less code: GEMM with no pieces wakes a native worker, NAP sends it to sleep."""
        if self.native is not None:
            self._collect()
            self.block[0], self.block[1] = code, 0
            self._post()

    def start(self, job: Job) -> None:
        self._collect()
        if not callable(job) and (len(job) > MAX_GEMMS or self.native is None and not blas().ok):
            job = (lambda pieces: lambda: run_job(pieces))(job)
        if callable(job):
            self.task, self.block[0] = job, PYTHON
        else:
            self.block[0], self.block[1] = GEMM, len(job)
            self.block[2:2 + PIECE * len(job)] = np.asarray(job, np.int64).reshape(-1)
        self._post()

    def finish(self) -> BaseException | None:
        """Wait for the job given with :meth:`start`; its exception, if any."""
        self._collect()
        error, self.error, self.task = self.error, None, None
        return error

    def stop(self) -> None:
        """End the thread (after any job still owed)."""
        self._collect()
        self.block[0] = STOP
        self._post()
        self._collect()


class Crew:
    """Workers shared by every split call of the process; one call at a time (others run unsplit)."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.lock = threading.Lock()

    def run(self, jobs: list[Job]) -> None:
        """``jobs[0]`` in the caller and ``jobs[i]`` on worker ``i - 1``; re-raise the first error.

        When another thread is using the crew (or a job itself splits), the jobs run one
        after the other in the caller instead.
        """
        if not self.lock.acquire(blocking=False):
            for job in jobs:
                run_job(job)
            return
        errors: list[BaseException] = []
        try:
            workers = self._enlist(len(jobs) - 1)
            for w, job in zip(workers, jobs[1:]):
                w.start(job)
            try:
                run_job(jobs[0])
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the workers
                errors.append(e)
            for w in workers:  # never return while a piece still writes into the caller's buffers
                error = w.finish()
                if error is not None:
                    errors.append(error)
        finally:
            self.lock.release()
        if errors:
            raise errors[0]

    def _enlist(self, n: int) -> list[Worker]:
        """The first ``n`` workers (started as needed; the lock is held)."""
        self.workers = [w for w in self.workers if not w.dead]
        while len(self.workers) < n:
            self.workers.append(Worker())
        return self.workers[:n]

    def _send(self, pick: Callable[[], list[Worker]], code: int) -> None:
        if self.lock.acquire(blocking=False):  # skipped while another thread runs a split
            try:
                for w in pick():
                    w.send(code)
            finally:
                self.lock.release()

    def warm(self, n: int) -> None:
        """Wake ``n`` workers ahead of a pass (a sleeping one takes 30-75 us), so they spin when it splits."""
        self._send(lambda: self._enlist(n), GEMM)

    def cool(self, keep: int = 0) -> None:
        """Send the workers past the first ``keep`` to sleep without spinning (after a pass)."""
        self._send(lambda: self.workers[keep:], NAP)

    def renew(self) -> None:
        """End the Python workers when machine-code ones can replace them (training began)."""
        if not (_training and native().ok):
            return
        with self.lock:
            for w in self.workers:
                if w.native is None:
                    w.stop()
            self.workers = [w for w in self.workers if w.native is not None]


__all__ = ["Blas", "Crew", "Native", "Worker", "blas", "native", "run_job", "training_started"]
