"""A crew worker's loop in machine code: GEMM pieces run, and hand-offs waited for, without the GIL.

Imported only through :mod:`dnnspec.engine.crew`, when numba is installed (the ``fast``
extra). A Python worker thread needs the GIL after every wake-up; when the caller holds
it at that moment the worker sleeps on the GIL's condition variable, and waking it again
costs 10-30 us (more on a virtual machine): as much as a split of an MLP's product gains.
:func:`serve` runs in the worker thread with the GIL released (``nogil``) and calls only
C functions, by address: the POSIX semaphore calls on the worker's two semaphores and the
BLAS library's ``cblas_sgemm``/``cblas_dgemm``. The addresses are arguments (not
globals), so the compiled functions are cached on disk like the optimizer's kernels.

Waiting (:func:`wait`) spins on ``sem_trywait`` (with the x86 ``pause`` hint between
tries) for ``spins`` tries (calibrated to about 200 us) and then sleeps in ``sem_wait``:
a hand-off inside a pass costs ~2 us, and a worker whose partner was descheduled (a busy
machine) sleeps instead of burning the CPU that partner needs.

Task block ``p`` (int64), written by the caller before it posts ``ready``::

    p[0]   code: 1 = GEMM pieces (run here); anything else is returned to Python
    p[1]   number of pieces n
    p[2 + 14 i : 16 + 14 i]   piece i: dtype (0 float32, 1 float64), then the row-major
           cblas arguments transA, transB, M, N, K, A, lda, B, ldb, C, ldc (pointers as
           integers), 2 spare; alpha = 1, beta = 0, order = row-major (101)

``fns`` (int64): addresses of sem_trywait, sem_wait, sem_post, cblas_sgemm, cblas_dgemm.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: int64 slots of one GEMM piece in the task block.
PIECE = 14
TRYWAIT, WAIT, POST, SGEMM, DGEMM = range(5)


@intrinsic
def _call_int(typingctx, addr, arg):
    """``int f(int64)`` called at address ``addr`` (the semaphore calls)."""
    sig = types.int32(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(64)])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1]])

    return sig, codegen


@intrinsic
def _call_gemm(typingctx, addr, p, start, one):
    """cblas_?gemm at ``addr`` with the 11 arguments at ``p[start:start + 11]`` (alpha = one, beta = 0)."""
    sig = types.void(types.int64, p, types.int64, one)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        ft = context.get_value_type(signature.args[3])
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, ft, i64, i64, i64, i64, ft, i64, i64])
        data = context.make_array(signature.args[1])(context, builder, args[1]).data
        v = [builder.load(builder.gep(data, [builder.add(args[2], ir.Constant(i64, i))])) for i in range(11)]
        row_major = ir.Constant(i32, 101)
        call = [row_major, builder.trunc(v[0], i32), builder.trunc(v[1], i32), v[2], v[3], v[4], args[3],
                v[5], v[6], v[7], v[8], ir.Constant(ft, 0.0), v[9], v[10]]
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), call)
        return context.get_dummy_value()

    return sig, codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _pause(typingctx):
    """The x86 ``pause`` hint between two tries (it spares the SMT sibling); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


def _jit(fn):
    """numba.njit(nogil) with an on-disk cache, without where none is writable (as fused_kernels does)."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "no locator available"
        return numba.njit(nogil=True)(fn)


@_jit
def wait(sem, fns, spins):  # pragma: no cover - compiled
    """Take one post of semaphore ``sem``: try ``spins`` times, then sleep. Returns the tries spent."""
    for i in range(spins):
        if _call_int(fns[TRYWAIT], sem) == 0:
            return i
        _pause()
    while _call_int(fns[WAIT], sem) != 0:  # EINTR: a signal arrived; wait on
        pass
    return spins


@_jit
def _run(p, first, n, fns):  # pragma: no cover - compiled
    for i in range(n):
        base = first + PIECE * i
        if p[base] == 0:
            _call_gemm(fns[SGEMM], p, base + 1, np.float32(1.0))
        else:
            _call_gemm(fns[DGEMM], p, base + 1, np.float64(1.0))


@_jit
def serve(p, ready, done, fns, spins):  # pragma: no cover - runs compiled, in a worker thread
    """Wait for ``ready``, run the posted GEMM pieces, post ``done``; return the first other code (unposted).

    Code 3 ("nap", answered at once) makes the next wait sleep without spinning first.
    """
    nap = False
    while True:
        wait(ready, fns, 0 if nap else spins)
        code = p[0]
        nap = code == 3
        if code != 1 and not nap:
            return code
        if code == 1:
            _run(p, 2, p[1], fns)
        _call_int(fns[POST], done)


@_jit
def spin_cost(sem, fns, n):  # pragma: no cover - compiled
    """``n`` failed ``sem_trywait`` calls (``sem`` at 0), for calibrating ``spins``."""
    failed = 0
    for _ in range(n):
        failed += _call_int(fns[TRYWAIT], sem) != 0
        _pause()
    return failed


@_jit
def gemms(rows, fns):  # pragma: no cover - compiled
    """Run GEMM pieces (rows of PIECE int64) in the calling thread, without the GIL."""
    _run(rows.reshape(-1), 0, rows.shape[0], fns)
