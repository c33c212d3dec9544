"""The op interface every engine layer implements, and the table keyed by layer kind.

An op is compiled from one :class:`dnnspec.ir.Layer`. Parameters live outside the op,
in the network's ``params`` dict keyed by full names (``dense1.kernel``); an op reads
them from ``params`` and writes its gradients into ``grads`` under the same names.

    y = op.forward(x, params, training, rng)     # x: (N, *layer.in_shape)
    dx = op.backward(dy, params, grads)          # dy: (N, *layer.out_shape)

``forward`` keeps what ``backward`` needs on the op (one forward, then one backward,
as the trainer calls them). ``op.need_dx = False`` lets the first layer skip its input
gradient, which nothing needs. Batch-norm running statistics are entries of ``params``
too (trainable=False); ``forward(training=True)`` updates them in place.

``OPS`` maps each kind of :mod:`dnnspec.registry` to its op class (``@register("dense")``
on the class); a name the registry does not know is refused, and tests/test_registry.py
checks that every registered kind has an op. A Net looks its ops up once, when it is built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import registry
from ..ir import Layer

OPS: dict[str, type[Op]] = {}


class Scratch:
    """Scratch arrays by tag, reused while a tag's shape and dtype repeat.

    One array per tag: a call with a new shape (the last, smaller batch of an epoch, or
    evaluation at batch 1024) replaces it, so memory is bounded by one batch of each
    kind, however many batch sizes a run sees. ``fill`` initialises a new array (a
    padded buffer's zero border then stays for good).
    """

    def __init__(self, dtype: Any = np.float32):
        self.dtype = np.dtype(dtype)
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, tag: str, shape: tuple[int, ...], dtype: Any = None,
                 fill: float | None = None) -> np.ndarray:
        dt = self.dtype if dtype is None else np.dtype(dtype)
        b = self._arrays.get(tag)
        if b is None or b.shape != shape or b.dtype != dt:
            b = np.empty(shape, dtype=dt) if fill is None else np.full(shape, fill, dtype=dt)
            self._arrays[tag] = b
        return b


def register(*kinds: str):
    """Class decorator: make the op class the engine's implementation of these layer kinds (registry names)."""
    unknown = [k for k in kinds if k not in registry.KINDS]
    if unknown:
        raise ValueError(f"engine op for unknown layer kind {unknown[0]!r}: register the kind in dnnspec.registry "
                         "first")

    def deco(cls: type[Op]) -> type[Op]:
        for k in kinds:
            OPS[k] = cls
        return cls

    return deco


def grad_out(grads: dict[str, np.ndarray], key: str, like: np.ndarray, dtype: Any = None) -> np.ndarray:
    """The gradient array for ``key``: the one in ``grads`` if it fits ``like`` (and ``dtype``), else a new one.

    Ops write gradients in place into the arrays the net preallocated, so a training
    step allocates nothing; a missing or misfit entry (ops driven directly) is created.
    """
    dt = like.dtype if dtype is None else np.dtype(dtype)
    g = grads.get(key)
    if g is None or g.shape != like.shape or g.dtype != dt:
        g = grads[key] = np.empty(like.shape, dt)
    return g


class Op:
    """Base of every engine op. Subclasses override forward and backward."""

    kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, layer: Layer, dtype: Any = np.float32):
        self.layer = layer
        self.name = layer.name
        self.opts = layer.options
        self.dtype = np.dtype(dtype)
        self.need_dx = True
        self.buf = Scratch(self.dtype)

    def key(self, local: str) -> str:
        return f"{self.name}.{local}"

    def forward(self, x: np.ndarray, params: dict[str, np.ndarray], training: bool,
                rng: np.random.Generator | None) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, params: dict[str, np.ndarray],
                 grads: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def compile_op(layer: Layer, dtype: Any = np.float32) -> Op:
    """The engine op for one IR layer; the kind must be registered."""
    try:
        cls = OPS[layer.kind]
    except KeyError:
        raise NotImplementedError(f"the engine has no op for layer kind {layer.kind!r}") from None
    return cls(layer, dtype)
