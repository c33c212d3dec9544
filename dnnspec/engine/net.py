"""The network: an IR model compiled to engine ops, its parameters and its passes.

    net = Net(model)                     # params initialised from one seeded generator
    probs = net.forward(x)               # (N, *input.shape) raw input -> final outputs
    loss, grads = net.loss_and_grads(x, y)

Input pipeline inside every pass: cast to ``net.dtype``, multiply by ``input.scale``,
then normalise ``(x*scale - mean) / std`` when the spec asks for it; the two steps are
fused into one affine map per channel, ``x * a + b`` with ``a = scale/std`` and
``b = -mean/std``.

A final softmax (with cross_entropy) or sigmoid (with binary_cross_entropy), the kind
whose registry entry names the loss as its ``head``, is the *head*: ``logits`` stops
before it and ``loss_and_grads`` fuses it with the loss. Specs as text or files become
Nets through :mod:`dnnspec.api` (``dnnspec.compile``): the engine reads only the IR.

Execution order: ``net.ops``/``net.body`` are the layers in spec order; the passes run
``net.run_ops``/``net.run_body``, the same ops in the same order except that a relu
directly followed by a maxpool runs AFTER it, on the smaller pooled tensor (see
:func:`_commute_relu_maxpool`), and a conv2d then directly followed by a maxpool whose
windows tile (stride = kernel, no padding) hands its output over window-major instead
of NCHW (see :func:`_feed_pools`). Names, params, checkpoints and export do not change.

Graphs (a model that is not a chain: ``from=``, residual blocks, ``add``, ``concat``) run
by a plan (:class:`Graph`, built by :func:`plan`): the body is cut into *segments*, runs of
layers where each one is the only reader of the one before; each segment runs like a
chain (relu/maxpool commuted, conv -> pool hand-overs), the segments in the spec's
topological order, over tensors keyed by layer name. Backward walks the plan in reverse
and sums the gradients of an output that several layers read. A chain keeps the plain
loop over ``run_body``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ir, memory, registry
from ..errors import DataError, Diagnostic, SpecError
from . import base, threads
from .init import init_param
from .losses import loss_function
from .ops import training_kernel

_STAT_CHUNK = 4096


def _load_ops() -> None:
    """Import the modules whose ops register themselves; conv.py may not exist yet."""
    importlib.import_module("dnnspec.engine.ops")
    importlib.import_module("dnnspec.engine.graph_ops")
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


@dataclass
class Step:
    """One op of a graph's plan: the tensors it reads (keys: layer names, ``input``, or ``~name`` inside a
    segment), the one it writes, whether it takes a list (add, concat), whether backward runs it."""

    op: base.Op
    ins: tuple[str, ...]
    out: str
    many: bool
    backward: bool = True


class Graph:
    """The body of a network that is not a chain: ``steps`` in run order, the output key ``out``.

    Forward keeps each tensor (an op's own buffer) under its key while the pass runs.
    Backward hands each op the gradient of its output and adds what it returns to its
    inputs' gradients: the first contribution is kept as it is (no copy), a second one
    sums into a buffer of the network's (reused across steps), later ones add into it.
    No op writes into its inputs or its ``dy``, so a tensor read by several layers and a
    gradient handed to several inputs (``add``) stay intact.
    """

    def __init__(self, steps: list[Step], out: str, dtype: Any):
        self.steps, self.out = steps, out
        self.buf = base.Scratch(dtype)

    def forward(self, h: np.ndarray, params: dict[str, np.ndarray], training: bool,
                rng: np.random.Generator | None) -> np.ndarray:
        vals = {ir.INPUT: h}
        for st in self.steps:
            x = [vals[k] for k in st.ins] if st.many else vals[st.ins[0]]
            vals[st.out] = st.op.forward(x, params, training, rng)
        return vals[self.out]

    def backward(self, d: np.ndarray, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        dout, owned = {self.out: d}, set()
        for st in reversed(self.steps):
            dy = dout.pop(st.out, None) if st.backward else None
            if dy is None:  # nothing upstream learns, or nothing downstream reads it
                continue
            dx = st.op.backward(dy, params, grads)
            if dx is None:
                continue
            for key, g in zip(st.ins, dx if st.many else (dx,)):
                if key != ir.INPUT:
                    self._add(dout, owned, key, g)

    def _add(self, dout: dict[str, np.ndarray], owned: set[str], key: str, g: np.ndarray) -> None:
        """dout[key] += g, summing into the network's own buffer for ``key`` (never into an op's array)."""
        have = dout.get(key)
        if have is None:
            dout[key] = g
        elif key in owned:
            have += g
        else:
            dout[key] = np.add(have, g, out=self.buf(f"grad:{key}", g.shape))
            owned.add(key)


def _segments(ops: list[base.Op], readers: dict[str, tuple[str, ...]]) -> list[list[base.Op]]:
    """``ops`` (spec order) cut into runs where each op is the only reader of the one before, which is its
    only input; in the order of their first ops, which is topological."""
    segments: list[list[base.Op]] = []
    open_by_last: dict[str, list[base.Op]] = {}
    for op in ops:
        ins = op.layer.inputs
        seg = open_by_last.pop(ins[0], None) if len(ins) == 1 and len(readers[ins[0]]) == 1 else None
        if seg is None:
            seg = []
            segments.append(seg)
        seg.append(op)
        open_by_last[op.name] = seg
    return segments


def plan(body: list[base.Op], out: str, model: ir.Model, dtype: Any, commute: bool, fuse: bool) -> Graph:
    """The :class:`Graph` that runs ``body`` (the ops of a non-chain model but its head), output key ``out``.

    Each segment (:func:`_segments`) runs as a chain would (relu -> maxpool commuted, conv
    -> pool hand-overs: only inside a segment, where the producer has one reader); its
    first op reads the segment's inputs, its last writes under the last layer's name,
    the ops between under ``~<name>``. ``need_dx`` is set where an input needs a gradient
    (some layer upstream learns); ops that neither learn nor pass a gradient on skip
    backward.
    """
    owners = {p.name.rsplit(".", 1)[0] for p in model.params if p.trainable}
    steps = []
    for seg in _segments(body, model.consumers):
        run = _commute_relu_maxpool(seg) if commute else list(seg)
        if fuse:
            _feed_pools(run)
        for k, op in enumerate(run):
            ins = seg[0].layer.inputs if k == 0 else (f"~{run[k - 1].name}",)
            key = seg[-1].name if k == len(run) - 1 else f"~{op.name}"
            steps.append(Step(op, tuple(ins), key, registry.takes_many(op.layer.kind)))
    learns: set[str] = set()
    for st in steps:
        st.op.need_dx = any(k in learns for k in st.ins)
        st.backward = st.op.need_dx or st.op.name in owners
        if st.backward:
            learns.add(st.out)
    return Graph(steps, out, dtype)


def _compile(layer: ir.Layer, dtype: np.dtype) -> base.Op:
    if layer.kind not in base.OPS:
        raise SpecError(Diagnostic(f"layer {layer.name}: the engine has no implementation of '{layer.kind}' yet",
                                   layer.span))
    return base.compile_op(layer, dtype)


def scale_kernel(x, a, out):
    """out = x * a over flat arrays, x uint8 and a of out's dtype: each x cast exactly, one rounding (as NumPy)."""
    for i in range(x.size):
        out[i] = x[i] * a


class Net:
    """A compiled network: ``params`` (every array by IR name), ``trainable``, passes, fit/save."""

    #: Run relu -> maxpool pairs as maxpool -> relu (an internal execution order; see the module doc).
    commute_relu_maxpool = True
    #: Let a conv2d hand its output to the tiling maxpool after it window-major (see _feed_pools).
    fuse_conv_maxpool = True
    #: Split passes and GEMMs over the engine's own threads with single-threaded BLAS
    #: (engine/threads.py): "auto" does it for networks with convolutions, whose ms-long passes
    #: repay the hand-offs, and there results do not depend on the thread count and the count
    #: follows the machine's load. An MLP keeps BLAS's own threads (threads.blas_threads: as
    #: many as the machine's load leaves CPUs): on a quiet machine they were 7-23 % faster per
    #: epoch (docs/engine.md, Threads); True opts an MLP in.
    own_threads: bool | str = "auto"

    def __init__(self, model: ir.Model, dtype: Any = np.float32, seed: int | None = None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, found {self.dtype}")
        _load_ops()
        self.model = model
        self.ops = [_compile(layer, self.dtype) for layer in model.layers]
        head_kind = registry.head_for(model.loss.kind)  # the final activation fused with the loss
        self.head = self.ops[-1] if self.ops and self.ops[-1].layer.kind == head_kind else None
        self.body = self.ops[:-1] if self.head is not None else list(self.ops)
        self.graph: Graph | None = None
        if model.is_chain:
            reorder = _commute_relu_maxpool if self.commute_relu_maxpool else list
            self.run_body = reorder(self.body)  # what the passes run; the head (not a relu) stays last
            if self.fuse_conv_maxpool:
                _feed_pools(self.run_body)
        else:
            out = self.head.layer.inputs[0] if self.head is not None else model.layers[-1].name
            self.graph = plan(self.body, out, model, self.dtype, self.commute_relu_maxpool, self.fuse_conv_maxpool)
            self.run_body = [st.op for st in self.graph.steps]
        self.run_ops = self.run_body + [self.head] if self.head is not None else self.run_body
        self.loss_fn = loss_function(model.loss)  # options bound (label_smoothing)
        self.rng = np.random.default_rng(model.train["seed"] if seed is None else seed)
        self.params: dict[str, np.ndarray] = {}
        self.trainable: list[str] = []
        for spec in model.params:
            self.params[spec.name] = init_param(spec, self.rng, self.dtype)
            if spec.trainable:
                self.trainable.append(spec.name)
        self._init_input_stats()
        self.grads = {k: np.zeros_like(self.params[k]) for k in self.trainable}
        self._first = self._first_with_grads() if self.graph is None else 0
        self._buf = base.Scratch(self.dtype)
        self.last_logits: np.ndarray | None = None
        auto = any(layer.kind == "conv2d" for layer in model.layers)
        self._threads = auto if self.own_threads == "auto" else bool(self.own_threads)

    def threads(self):
        """The context every pass runs in: :func:`threads.own_threads` or :func:`threads.blas_threads` (nest).

        The trainer holds it around whole epochs, so that BLAS is not switched between
        one and several threads at every step (OpenBLAS's workers spin after a GEMM).
        """
        return threads.own_threads() if self._threads else threads.blas_threads()

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

    def _prepare(self, x: np.ndarray, reuse: bool, training: bool = False) -> np.ndarray:
        """Raw (N, *input.shape) -> net.dtype, scaled and normalised: x * a + b per channel.

        In training, uint8 images scaled without normalisation take one compiled pass
        (:func:`scale_kernel`, the same bits): NumPy's mixed-type multiply is 4x slower.
        """
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
            kernel = training_kernel(scale_kernel, training and x.dtype == np.uint8, x, out)
            if kernel is not None:
                kernel(x.reshape(-1), self.dtype.type(scale), out.reshape(-1))
                return out
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
            h = self._prepare(x, reuse, training)
            if self.graph is not None:  # a graph: its plan runs the body; then the head, when ops has it
                h = self.graph.forward(h, self.params, training, rng)
                ops = ops[len(self.run_body):]
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
            threads.step()  # the thread-count governor times steps (engine/threads.py)
            z = self._run(self.run_body, x, True, rng or self.rng, reuse=True)
            self.last_logits = z
            loss, d = self.loss_fn(z, y, out=self._buf("dlogits", z.shape))
            if self.graph is not None:
                self.graph.backward(d, self.params, self.grads)
                return loss, self.grads
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

    def predict(self, x: np.ndarray, batch: int | None = None) -> np.ndarray:
        """Class ids (N,) for classification; outputs (N, targets) for regression; ``batch`` rows a pass
        (default :func:`dnnspec.memory.eval_batch`: 2048, fewer where their scratch would pass 256 MiB)."""
        batch = batch or memory.eval_batch(self.model)
        if self.model.task.kind != "classification":
            return np.concatenate([self.forward(x[i:i + batch]) for i in range(0, len(x), batch)])
        out = np.empty(len(x), dtype=np.int64)
        for i, z in self._batches(x, batch):
            out[i:i + len(z)] = self.classify(z)
        return out

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch: int | None = None) -> dict[str, float]:
        """Mean loss over all examples (evaluation mode) and, for classification, accuracy; ``batch`` as predict's."""
        batch = batch or memory.eval_batch(self.model)
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

