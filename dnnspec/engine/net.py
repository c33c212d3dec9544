"""The network: an IR model compiled to engine ops, its parameters and its passes.

    net = Net(model)                     # params initialised from one seeded generator
    probs = net.forward(x)               # (N, *input.shape) raw input -> final outputs
    loss, grads = net.loss_and_grads(x, y)

Input pipeline inside every pass: cast to ``net.dtype``, multiply by ``input.scale``,
then normalise ``(x*scale - mean) / std`` when the spec asks for it; the two steps are
fused into one affine map per channel, ``x * a + b`` with ``a = scale/std`` and
``b = -mean/std``.

A final softmax (with cross_entropy) or sigmoid (with binary_cross_entropy) is the
*head*: ``logits`` stops before it and ``loss_and_grads`` fuses it with the loss.

Execution order: ``net.ops``/``net.body`` are the layers in spec order; the passes run
``net.run_ops``/``net.run_body``, the same ops in the same order except that a relu
directly followed by a maxpool runs AFTER it, on the smaller pooled tensor (see
:func:`_commute_relu_maxpool`), and a conv2d then directly followed by a maxpool whose
windows tile (stride = kernel, no padding) hands its output over window-major instead
of NCHW (see :func:`_feed_pools`). Names, params, checkpoints and export do not change.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import numpy as np

from .. import ir
from ..errors import DataError, Diagnostic, SpecError
from . import base, threads
from .init import init_param
from .losses import LOSSES

HEADS = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}
_STAT_CHUNK = 4096


def _load_ops() -> None:
    """Import the modules whose ops register themselves; conv.py may not exist yet."""
    importlib.import_module("dnnspec.engine.ops")
    try:
        importlib.import_module("dnnspec.engine.conv")
    except ModuleNotFoundError as e:
        if e.name != "dnnspec.engine.conv":
            raise


def _commute_relu_maxpool(ops: list[base.Op]) -> list[base.Op]:
    """``ops`` with every (relu, maxpool) pair run as (maxpool, relu): the same results, less work.

    relu(maxpool(x)) == maxpool(relu(x)) exactly, as relu is monotone and every window
    holds at least one real pixel (pads < kernel). Gradients agree too: the maxpool routes
    a window's dy to its first maximum in row-major order; where the max is > 0 that is the
    same input in both orders (relu keeps positive values and their order) and the relu
    mask there is 1; where the max is <= 0 both give dx = 0 for the whole window (relu
    first: the mask is 0 wherever relu(x) = 0; relu last: its output, hence dy, is 0).
    """
    out = list(ops)
    i = 0
    while i + 1 < len(out):
        a, b = out[i], out[i + 1]
        if (a.layer.kind == "relu" and b.layer.kind == "maxpool"
                and max(b.pads[0], b.pads[2]) < b.kernel[0] and max(b.pads[1], b.pads[3]) < b.kernel[1]):
            out[i], out[i + 1] = b, a
            i += 2
        else:
            i += 1
    return out


def _feed_pools(ops: list[base.Op]) -> None:
    """Let every conv2d followed (in run order) by a tiling maxpool, directly or through one batchnorm,
    hand its output over window-major.

    See :meth:`dnnspec.engine.conv.Conv2D.feed_pool`: the same values and gradients, in
    an order that spares the pool a transposing copy and a scatter, and the conv the
    pixels the pool floors away. Only the array passed between the two changes.
    """
    for i, a in enumerate(ops):
        if a.layer.kind != "conv2d":
            continue
        b, c = (ops + [None, None])[i + 1:i + 3]
        if b is not None and b.layer.kind == "maxpool" and b._tiles():
            a.feed_pool(b)
        elif (b is not None and b.layer.kind == "batchnorm" and c is not None and c.layer.kind == "maxpool"
              and c._covers_all()):
            # conv -> batchnorm -> maxpool: the norm passes the blocks through. Only when the windows
            # cover every pixel: the batch statistics must count the pixels a pool would floor away.
            a.feed_pool(c, through=b)


def _compile(layer: ir.Layer, dtype: np.dtype) -> base.Op:
    if layer.kind not in base.OPS:
        raise SpecError(Diagnostic(f"layer {layer.name}: the engine has no implementation of '{layer.kind}' yet",
                                   layer.span))
    return base.compile_op(layer, dtype)


class Net:
    """A compiled network: ``params`` (every array by IR name), ``trainable``, passes, fit/save."""

    #: Run relu -> maxpool pairs as maxpool -> relu (an internal execution order; see the module doc).
    commute_relu_maxpool = True
    #: Let a conv2d hand its output to the tiling maxpool after it window-major (see _feed_pools).
    fuse_conv_maxpool = True
    #: Split passes and GEMMs over the engine's own threads with single-threaded BLAS
    #: (engine/threads.py): "auto" does it for networks with convolutions, whose ms-long
    #: passes repay the hand-offs; an MLP's are too short.
    own_threads: bool | str = "auto"

    def __init__(self, model: ir.Model, dtype: Any = np.float32, seed: int | None = None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, found {self.dtype}")
        _load_ops()
        self.model = model
        self.ops = [_compile(layer, self.dtype) for layer in model.layers]
        head_kind = HEADS.get(model.loss.kind)
        self.head = self.ops[-1] if self.ops and self.ops[-1].layer.kind == head_kind else None
        self.body = self.ops[:-1] if self.head is not None else list(self.ops)
        reorder = _commute_relu_maxpool if self.commute_relu_maxpool else list
        self.run_body = reorder(self.body)  # what the passes run; the head (not a relu) stays last
        self.run_ops = self.run_body + [self.head] if self.head is not None else self.run_body
        if self.fuse_conv_maxpool:
            _feed_pools(self.run_body)
        self.loss_fn = LOSSES[model.loss.kind]
        self.rng = np.random.default_rng(model.train["seed"] if seed is None else seed)
        self.params: dict[str, np.ndarray] = {}
        self.trainable: list[str] = []
        for spec in model.params:
            self.params[spec.name] = init_param(spec, self.rng, self.dtype)
            if spec.trainable:
                self.trainable.append(spec.name)
        self._init_input_stats()
        self.grads = {k: np.zeros_like(self.params[k]) for k in self.trainable}
        self._first = self._first_with_grads()
        self._buf = base.Scratch(self.dtype)
        self.last_logits: np.ndarray | None = None
        auto = any(layer.kind == "conv2d" for layer in model.layers)
        self._threads = auto if self.own_threads == "auto" else bool(self.own_threads)

    def threads(self):
        """The context every pass runs in: :func:`threads.own_threads` (re-entrant) or nothing.

        The trainer holds it around whole epochs, so that BLAS is not switched between
        one and several threads at every step (OpenBLAS's workers spin after a GEMM).
        """
        return threads.own_threads() if self._threads else contextlib.nullcontext()

    # --- input --------------------------------------------------------------------

    def _init_input_stats(self) -> None:
        norm = self.model.normalize
        if norm.mode == "none":
            return
        c = self.model.input.shape[0]
        if norm.mode == "values":
            mean = np.broadcast_to(np.asarray(norm.mean, dtype=np.float64), (c,))
            std = np.broadcast_to(np.asarray(norm.std, dtype=np.float64), (c,))
        else:
            mean, std = np.zeros(c), np.ones(c)
        self.params["input.mean"] = mean.astype(self.dtype)
        self.params["input.std"] = std.astype(self.dtype)

    def set_input_stats(self, x: np.ndarray) -> None:
        """Measure ``input.mean``/``input.std`` on raw training inputs (mode auto), in scaled units.

        x (N, C, H, W) -> per channel; x (N, F) -> per feature. Two passes over chunks
        in float64 (no float copy of the whole set); a std below 1e-8 becomes 1.
        """
        if self.model.normalize.mode == "none":
            return
        axes = (0,) + tuple(range(2, x.ndim))
        n = x.size // x.shape[1]
        total = np.zeros(x.shape[1])
        for i in range(0, len(x), _STAT_CHUNK):
            total += x[i:i + _STAT_CHUNK].sum(axis=axes, dtype=np.float64)
        mean = total / n
        m2 = np.zeros(x.shape[1])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        for i in range(0, len(x), _STAT_CHUNK):
            d = x[i:i + _STAT_CHUNK].astype(np.float64)
            d -= mean.reshape(shape)
            d *= d
            m2 += d.sum(axis=axes)
        std = np.sqrt(m2 / n)
        scale = self.model.input.scale
        mean, std = mean * scale, std * scale
        std[std < 1e-8] = 1.0
        self.params["input.mean"][...] = mean
        self.params["input.std"][...] = std

    def _prepare(self, x: np.ndarray, reuse: bool) -> np.ndarray:
        """Raw (N, *input.shape) -> net.dtype, scaled and normalised: x * a + b per channel."""
        x = np.asarray(x)
        if x.ndim != len(self.model.input.shape) + 1 or x.shape[1:] != self.model.input.shape:
            want = ", ".join(str(d) for d in self.model.input.shape)
            raise DataError(f"the network expects inputs of shape (N, {want}), found {x.shape}")
        scale = self.model.input.scale
        norm = "input.mean" in self.params
        if not norm and scale == 1.0:
            return x.astype(self.dtype, copy=False)
        out = self._buf("input", x.shape) if reuse else np.empty(x.shape, self.dtype)
        cs = (1, -1) + (1,) * (x.ndim - 2)
        if not norm:
            return np.multiply(x, self.dtype.type(scale), out=out, casting="unsafe")
        std = self.params["input.std"].reshape(cs)
        a = (scale / std).astype(self.dtype, copy=False)
        np.multiply(x, a, out=out, casting="unsafe")
        out -= self.params["input.mean"].reshape(cs) / std
        return out

    # --- passes -------------------------------------------------------------------

    def _run(self, ops: list[base.Op], x: np.ndarray, training: bool, rng: np.random.Generator | None,
             reuse: bool = False) -> np.ndarray:
        with self.threads():
            h = self._prepare(x, reuse)
            for op in ops:
                h = op.forward(h, self.params, training, rng)
        return h

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
        """Raw input (N, *input.shape) -> outputs (N, *output_shape), after the final activation."""
        h = self._run(self.run_ops, x, training, (rng or self.rng) if training else None)
        return np.array(h, copy=True)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Like forward (evaluation mode) without the final softmax/sigmoid."""
        return np.array(self._run(self.run_body, x, False, None), copy=True)

    def _first_with_grads(self) -> int:
        """Index in ``run_body`` of the first op that owns a trainable parameter; backward stops there."""
        owners = {name.rsplit(".", 1)[0] for name in self.trainable}
        for op in self.run_body:
            op.need_dx = True
        for i, op in enumerate(self.run_body):
            if op.name in owners:
                op.need_dx = False
                return i
        return len(self.run_body)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray,
                       rng: np.random.Generator | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """One training-mode pass: (mean loss, {trainable name: gradient}).

        Only batch-norm running statistics change. The returned gradient arrays are the
        net's own buffers, overwritten by the next call (copy them to keep them);
        ``net.last_logits`` holds this batch's logits (N, K) until the next pass, for
        running accuracy.
        """
        with self.threads():
            z = self._run(self.run_body, x, True, rng or self.rng, reuse=True)
            self.last_logits = z
            loss, d = self.loss_fn(z, y, out=self._buf("dlogits", z.shape))
            for op in reversed(self.run_body[self._first:]):
                d = op.backward(d, self.params, self.grads)
        return loss, self.grads

    # --- evaluation ---------------------------------------------------------------

    def _batches(self, x: np.ndarray, batch: int):
        for i in range(0, len(x), batch):
            yield i, self._run(self.run_body, x[i:i + batch], False, None, reuse=True)

    def classify(self, z: np.ndarray) -> np.ndarray:
        """Logits (N, K) -> class ids: argmax, or logit > 0 (probability > 1/2) for binary."""
        if self.model.loss.kind == "binary_cross_entropy":
            return (z.reshape(len(z)) > 0).astype(np.int64)
        return z.argmax(axis=-1)

    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        """Class ids (N,) for classification; outputs (N, targets) for regression."""
        if self.model.task.kind != "classification":
            return np.concatenate([self.forward(x[i:i + batch]) for i in range(0, len(x), batch)])
        out = np.empty(len(x), dtype=np.int64)
        for i, z in self._batches(x, batch):
            out[i:i + len(z)] = self.classify(z)
        return out

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> dict[str, float]:
        """Mean loss over all examples (evaluation mode) and, for classification, accuracy."""
        total, correct = 0.0, 0
        classify = self.model.task.kind == "classification"
        for i, z in self._batches(x, batch):
            yb = y[i:i + len(z)]
            loss, _ = self.loss_fn(z, yb, grad=False)
            total += loss * len(z)
            if classify:
                correct += int(np.count_nonzero(self.classify(z) == np.asarray(yb).reshape(len(z))))
        result = {"loss": total / max(len(x), 1)}
        if classify:
            result["accuracy"] = correct / max(len(x), 1)
        return result

    # --- training and saving (other modules) ------------------------------------------

    def fit(self, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        """Train with :func:`dnnspec.engine.trainer.fit` (epochs, batches, validation, ...)."""
        from .trainer import fit

        return fit(self, x, y, **kw)

    def save(self, path: Any) -> Any:
        """Write the weights and spec with :func:`dnnspec.checkpoint.save_net`."""
        from ..checkpoint import save_net

        return save_net(self, path)

    def __repr__(self) -> str:
        n = sum(self.params[k].size for k in self.trainable)
        return f"Net({self.model.name!r}, {len(self.ops)} layers, {n} trainable parameters, {self.dtype})"


def compile_net(path_or_text: Any, dtype: Any = np.float32, seed: int | None = None) -> Net:
    """``dnnspec.compile``: a Net from an ``ir.Model``, a ``.dnn`` path, or spec text.

    A ``pathlib.Path``, or a one-line string naming an existing file or ending in
    ``.dnn``, is read with ``frontend.load``; any other string is parsed as spec text.
    """
    import os

    if isinstance(path_or_text, ir.Model):
        return Net(path_or_text, dtype=dtype, seed=seed)
    from .. import frontend

    if isinstance(path_or_text, os.PathLike):
        return Net(frontend.load(os.fspath(path_or_text)), dtype=dtype, seed=seed)
    text = str(path_or_text)
    if "\n" not in text and (text.strip().endswith(".dnn") or os.path.isfile(text)):
        return Net(frontend.load(text), dtype=dtype, seed=seed)
    return Net(frontend.parse(text), dtype=dtype, seed=seed)
