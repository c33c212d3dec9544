"""The graph builder the ONNX converters write into, with the folding of affine maps.

The exporter walks the IR layers in order. Two things are held back instead of being
written at once, so that they can be folded away:

* the *open linear* layer (a Gemm or Conv whose weights may still change): a batch norm
  (when folding) that directly follows it is folded into its output side,
  ``a*(x W + b) + c = x (W a) + (b a + c)``;
* a *pending affine* map ``y = a*x + c`` per channel (per feature for vectors) that
  has not been applied yet: the input's scale and normalisation, scale-mode dropout's
  keep probability, a batch norm that follows an activation. It is carried through
  layers it commutes with (pools, flatten, positively homogeneous activations when
  ``c == 0``) and folded into the *input side* of the next Gemm (always exact) or Conv
  (exact when ``c == 0`` or the conv has no padding). Whatever cannot be folded is
  written as one ``Mul`` and one ``Add``.

Folding is done in float64; the initializers are written in float32.

Graphs: what is held back belongs to one tensor. After each layer the exporter stores
the builder's state (:class:`Held`: the current tensor, its shape, the open linear layer,
the pending map) under the layer's name (:meth:`GraphBuilder.leave`) and a layer starts
from the state of its input (:meth:`GraphBuilder.use`). An output read by several layers
writes its open Gemm/Conv first (it cannot be folded two ways); its pending map goes to
each reader, which folds it or writes it. ``add`` and ``concat`` read materialized
tensors (:meth:`GraphBuilder.value`). A chain leaves and uses the same state: its
export is what it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class Linear:
    """A Gemm (dense) or Conv whose weights may still absorb affine maps.

    kernel: ``(in, units)`` for dense, ``(filters, in_channels, kh, kw)`` for conv.
    """

    name: str
    op: str
    kernel: np.ndarray
    bias: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)
    padded: bool = False

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[1] if self.op == "Gemm" else self.kernel.shape[0]

    def fold_output(self, a: np.ndarray, c: np.ndarray) -> None:
        """Replace ``y`` by ``a*y + c`` (per output channel) inside the weights."""
        if self.op == "Gemm":
            self.kernel = self.kernel * a[None, :]
        else:
            self.kernel = self.kernel * a[:, None, None, None]
        bias = self.bias if self.bias is not None else np.zeros(self.out_channels)
        self.bias = bias * a + c

    def can_fold_input(self, c: np.ndarray) -> bool:
        """A shift before a padded conv would also shift the zero padding: not exact."""
        return self.op == "Gemm" or not self.padded or not np.any(c)

    def fold_input(self, a: np.ndarray, c: np.ndarray) -> None:
        """Replace the input ``x`` by ``a*x + c`` (per input channel/feature) inside the weights."""
        k = self.kernel
        if self.op == "Gemm":
            shift = c @ k
            self.kernel = k * a[:, None]
        else:
            shift = np.einsum("fikl,i->f", k, c)
            self.kernel = k * a[None, :, None, None]
        if np.any(shift):
            self.bias = shift if self.bias is None else self.bias + shift


@dataclass(frozen=True)
class Held:
    """A tensor as the builder holds it: its ONNX name, per-example shape, open linear layer, pending map."""

    x: str
    shape: tuple[int, ...]
    open: Linear | None
    pending: tuple[np.ndarray, np.ndarray] | None
    pending_label: str


class GraphBuilder:
    """Collects nodes and initializers; tracks the current tensor and its per-example shape."""

    def __init__(self, input_name: str, shape: tuple[int, ...], dense_op: str = "gemm"):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = {input_name}
        self.x = input_name
        self.shape = tuple(shape)
        self.dense_op = dense_op
        self.open: Linear | None = None
        self.pending: tuple[np.ndarray, np.ndarray] | None = None
        self.pending_label = "input"
        self.held: dict[str, Held] = {}

    # --- graphs: one held state per layer output ---------------------------------

    def state(self) -> Held:
        return Held(self.x, self.shape, self.open, self.pending, self.pending_label)

    def restore(self, held: Held) -> None:
        self.x, self.shape, self.open, self.pending, self.pending_label = (
            held.x, held.shape, held.open, held.pending, held.pending_label)

    def leave(self, name: str, readers: int) -> None:
        """Store the current state as layer ``name``'s output; read by several layers, its open Gemm/Conv is
        written first (the pending map, a value, goes to each reader)."""
        if readers > 1:
            self.emit_linear()
        self.held[name] = self.state()

    def use(self, name: str) -> None:
        """Continue from layer ``name``'s output (``input``: the model's input, after its scaling)."""
        self.restore(self.held[name])

    def value(self, name: str) -> str:
        """Layer ``name``'s output written out (nothing held back): its tensor name. The stored state is
        updated, so that another reader does not write the same nodes again."""
        self.use(name)
        self.materialize()
        self.held[name] = replace(self.held[name], x=self.x, open=None, pending=None)
        return self.x

    # --- low level -------------------------------------------------------------

    def const(self, name: str, value: np.ndarray) -> str:
        """Add a float32 initializer (or int64, for shapes) and return its name."""
        arr = np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
        name = self.unique(name)
        self.initializers.append(self._numpy_helper.from_array(arr, name))
        return name

    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def node(self, op: str, inputs: list[str], out: str, name: str | None = None, **attrs: Any) -> str:
        """Append one node reading ``inputs``; its output tensor (``out``, made unique) becomes current."""
        out = self.unique(out)
        self.nodes.append(self._helper.make_node(op, inputs, [out], name=name or f"{out}/{op}", **attrs))
        self.x = out
        return out

    def channel_shape(self, arr: np.ndarray) -> np.ndarray:
        """Reshape a per-channel vector so that it broadcasts over ``(N, C, H, W)`` or ``(N, F)``."""
        return arr.reshape((-1,) + (1,) * (len(self.shape) - 1))

    # --- the held-back linear layer and affine map -------------------------------

    def emit_linear(self) -> None:
        """Write the open Gemm/Conv, if any."""
        lin, self.open = self.open, None
        if lin is None:
            return
        w = self.const(f"{lin.name}.kernel", lin.kernel)
        b = self.const(f"{lin.name}.bias", lin.bias) if lin.bias is not None else None
        if lin.op == "Gemm" and self.dense_op == "matmul":
            self.node("MatMul", [self.x, w], lin.name if b is None else f"{lin.name}/matmul",
                      name=f"{lin.name}/MatMul")
            if b is not None:
                self.node("Add", [self.x, b], lin.name, name=f"{lin.name}/Add")
            return
        self.node(lin.op, [self.x, w] + ([b] if b is not None else []), lin.name,
                  name=f"{lin.name}/{lin.op}", **lin.attrs)

    def emit_pending(self) -> None:
        """Write the pending affine map as Mul and/or Add (skipping an identity part)."""
        if self.pending is None:
            return
        (a, c), label = self.pending, self.pending_label
        self.pending = None
        if np.any(a != 1):
            scale = self.const(f"{label}.scale", self.channel_shape(a))
            self.node("Mul", [self.x, scale], f"{label}/scaled", name=f"{label}/Mul")
        if np.any(c):
            shift = self.const(f"{label}.shift", self.channel_shape(c))
            self.node("Add", [self.x, shift], f"{label}/shifted", name=f"{label}/Add")

    def materialize(self) -> None:
        """Write everything held back: the open linear layer, then the pending map."""
        self.emit_linear()
        self.emit_pending()

    def before(self, *, carry: bool = False, positive: bool = False) -> None:
        """Get ready for a layer: write the open linear layer; keep the pending map only if it commutes.

        carry: the layer commutes with per-channel affine maps (pools, flatten);
        positive: it commutes with positive per-channel scalings only (ReLU, leaky ReLU, max pool).
        """
        self.emit_linear()
        if self.pending is None:
            return
        a, c = self.pending
        if carry and (not positive or np.all(a > 0)):
            return
        if positive and np.all(a > 0) and not np.any(c):
            return
        self.emit_pending()

    def affine(self, a: np.ndarray, c: np.ndarray, label: str, *, into_previous: bool) -> None:
        """Apply ``y = a*x + c`` per channel: into the open linear layer's output, or held as pending."""
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        if into_previous and self.open is not None:
            if self.pending is not None:  # e.g. scale-mode dropout between the linear layer and this one
                (pa, pc), self.pending = self.pending, None
                a, c = pa * a, pc * a + c
            self.open.fold_output(a, c)
            return
        if self.pending is None:
            self.pending, self.pending_label = (a, c), label
            return
        pa, pc = self.pending
        self.pending = (pa * a, pc * a + c)  # the first contributor keeps naming the nodes

    def open_linear(self, lin: Linear) -> None:
        """Start a Gemm/Conv: write what came before; fold the pending map into its input if exact."""
        self.emit_linear()
        if self.pending is not None and lin.can_fold_input(self.pending[1]):
            lin.fold_input(*self.pending)
            self.pending = None
        self.emit_pending()
        self.open = lin

    def flatten_pending(self, size: int) -> None:
        """Flatten (C, H, W) -> (C*H*W,): a per-channel pending map becomes per feature."""
        if self.pending is not None:
            a, c = self.pending
            self.pending = (np.repeat(a, size // a.size), np.repeat(c, size // c.size))
