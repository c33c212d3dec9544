"""Which path runs: the compiled numba kernels (optimizer step, training passes) or the NumPy passes.

The NumPy step of Adam is 12 passes over the parameters (``m *= b1``, ``m += ...``,
``sqrt``, ``divide``...), each reading and writing whole arrays; with numba installed
(``pip install 'dnnspec[fast]'``) :mod:`dnnspec.engine.fused_kernels` does the same
arithmetic in one pass per element, and gives the same bits. Without numba, the NumPy
path runs; nothing else changes.

``$DNNSPEC_FUSED`` chooses, for every optimizer built after it is set:

* unset, empty or ``auto``: the fused step when numba imports, else NumPy;
* ``0``: always NumPy (for comparison, or to take numba out of a run);
* ``1``: the fused step, and a :class:`~dnnspec.errors.UsageError` when numba is missing.

The same switch picks the elementwise kernels of training passes (:func:`compiled`: the
ReLU mask, ...), which sit beside their ops as plain loops and give the NumPy passes' bits.

An optimizer's ``fused=`` argument overrides the variable (True, False, or None for it).
numba is imported here lazily, the first time an optimizer or a training pass asks:
``dnnspec check``, ``export``, ``predict`` and ``serve`` do neither, so they never import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

from ..errors import UsageError

ENV = "DNNSPEC_FUSED"
_CHOICES = {"": None, "auto": None, "0": False, "1": True}

_kernels: ModuleType | None = None
_missing: str | None = None  # why numba did not import, once tried
_compiled: dict[Callable, Callable] = {}
_answers: dict[tuple[Callable, str | None], Callable | None] = {}  # compiled()'s answers


def wanted(fused: bool | None = None) -> bool | None:
    """``fused`` if given, else what ``$DNNSPEC_FUSED`` asks: True (required), False (NumPy), None (auto)."""
    if fused is not None:
        return bool(fused)
    value = os.environ.get(ENV, "").strip().lower()
    if value not in _CHOICES:
        raise UsageError(f"${ENV} is {os.environ[ENV]!r}; expected 0 (the NumPy passes), 1 (the compiled "
                         f"numba kernels) or auto (compiled when numba is installed); or unset it")
    return _CHOICES[value]


def _load() -> ModuleType | None:
    """The kernel module, importing numba on the first call; None (and the reason kept) without it."""
    global _kernels, _missing
    if _kernels is None and _missing is None:
        try:
            from . import fused_kernels
        except Exception as e:  # noqa: BLE001 - no numba, or one that does not fit this NumPy: the NumPy path
            _missing = f"{type(e).__name__}: {e}".strip().rstrip(":")
        else:
            _kernels = fused_kernels
    return _kernels


def kernels(fused: bool | None = None) -> ModuleType | None:
    """The compiled kernels for a new optimizer, or None for the NumPy path (see the module doc)."""
    want = wanted(fused)
    if want is False:
        return None
    k = _load()
    if k is None and want:
        raise UsageError(f"${ENV}=1 asks for the compiled kernels, which need numba, and numba does not import "
                         f"here ({_missing}); install it with pip install 'dnnspec[fast]', or unset ${ENV}")
    return k


def compiled(fn: Callable) -> Callable | None:
    """``fn`` compiled with the kernels' options (cached on disk), or None where the NumPy path runs.

    For the elementwise kernels written as plain loops beside the op they speed up (ops.py):
    ``fn`` must be self-contained (numba compiles it, and nothing it calls, from its source).
    Decided per call, so ``$DNNSPEC_FUSED`` applies to nets built before it was set; the answer
    for each (kernel, value of the variable) is remembered, since training asks several times a
    step (a lookup instead of parsing the variable: ~2 % of an MLP step).
    """
    key = (fn, os.environ.get(ENV))
    try:
        return _answers[key]
    except KeyError:
        pass
    k = kernels()  # may raise (a bad value, or 1 without numba): such answers are not remembered
    c = None
    if k is not None:
        c = _compiled.get(fn)
        if c is None:
            c = _compiled[fn] = k.jit(fn)
    _answers[key] = c
    return c


def describe(fused: bool | None = None) -> str:
    """One line for benchmarks and logs: which step a new optimizer would run, and why."""
    try:
        k = kernels(fused)
    except UsageError as e:
        return str(e)
    if k is not None:
        return f"fused (numba {k.VERSION})"
    return f"NumPy ({ENV}=0)" if wanted(fused) is False else f"NumPy (numba not available: {_missing})"


__all__ = ["ENV", "compiled", "describe", "kernels", "wanted"]
