"""Optimizers: SGD (plain, momentum, Nesterov), AdaGrad, RMSProp and Adam, updating in place.

Optax splits an optimizer into ``init(params) -> state`` and ``update(grads, state)``;
we keep that shape but allocate the state once and update ``params`` in place, because a
NumPy training step cannot afford a new array per parameter per step.

Every optimizer runs the same chain on each step (the shared front lives in
:class:`Optimizer`, each subclass only supplies its ``_direction``)::

    g  <- grad * min(1, clip_norm / ||grads||)      clipping by global norm (clip_norm > 0)
    g  <- g + wd * w                                  decay_mode l2, kernels only
    w  <- w - lr * direction(g)                       the optimizer proper
    w  <- w - lr * wd * w_old                         decay_mode decoupled, kernels only (AdamW)

Weight decay touches kernels only (names ending ``.kernel``), never biases, batch-norm
gamma/beta or learned alphas.

The lecture's Adam has two slips that we correct (see docs/optimizers.md): it *adds* the
step (``w <- w + eta ...``), and it writes the bias-corrected moments back into the moment
variables, which compounds the correction step after step. Here the step is subtracted
and ``m_hat``, ``s_hat`` are separate values computed fresh each step.

Subnormal floats: a gradient that is exactly zero (a dead ReLU unit) makes every decaying
trace (momentum, RMSProp's ``s``, Adam's ``m`` and ``s``) shrink geometrically until it is
subnormal, and arithmetic on subnormals is tens of times slower on x86. Every ``K`` steps
(``K`` chosen from the smallest decay rate so that a trace shrinks by at most 2^-40 in
between) small entries are set to zero; each optimizer's :meth:`Optimizer.flush_floors`
says below what, per state slot (the one place to look for this rule):

* traces outside the square root (momentum ``v``, Adam's ``m``): below ``tiny * 2^44``
  (about 2e-25 in float32), so they never reach the subnormal range;
* traces under ``sqrt(s + eps)`` (RMSProp's and Adam's ``s``): only below
  :func:`root_flush_floor` as well, a bound relative to ``eps`` under which zeroing moves
  ``s_hat + eps`` by less than half a rounding error, for any ``eps > 0``; AdaGrad's sum
  never decays and is never flushed. Zeroing a squared-gradient state that is large next
  to ``eps`` would change the step (by 23 % in Adam at ``eps=1e-30``).

Two paths, one rule. With numba installed (``pip install 'dnnspec[fast]'``) each step runs
the compiled kernels of :mod:`dnnspec.engine.fused_kernels`: clipping, decay, the update of
the weights and of every state slot, and the flush, in one pass per element; they perform
the NumPy path's operations in its order and dtype, so both paths give the same bits.
Without numba, or with ``$DNNSPEC_FUSED=0`` (see :mod:`dnnspec.engine.fused`), the NumPy
path below runs. In it all state of one kind (``m``, ``s``, ``v``, scratch) lives in one
flat buffer with a view per parameter, so the steps that do not touch a gradient run as
one NumPy call over every parameter at once instead of one per array; the fused path
slices the same buffers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from ..ir import Step
from . import fused as _fused
from . import threads
from .threads import parallel

_FLUSH_SHRINK = 2.0 ** -40   # a trace may shrink by at most this between two flushes
_FLUSH_ABOVE_TINY = 2.0 ** 44  # flush threshold = tiny * this, so flushed-to survivors stay normal
#: The fused step splits over the engine's threads (inside threads.own_threads) only from this many
#: elements: it costs ~0.2 ns per element, so a smaller step is done before a worker has woken up.
FUSED_SPLIT_MIN = 1 << 21


def is_decayed(name: str) -> bool:
    """Weight decay applies to kernels only: ``dense1.kernel`` yes, ``dense1.bias`` no."""
    return name.endswith(".kernel")


def global_norm(grads: Mapping[str, np.ndarray], names: Iterable[str]) -> float:
    """sqrt(sum_i ||g_i||^2) over the named gradients (inf or nan if any entry is)."""
    total = 0.0
    for n in names:
        g = grads[n].reshape(-1)
        total += float(np.dot(g, g))
    return math.sqrt(total) if math.isfinite(total) else total


def root_flush_floor(eps: float, decay: float, every: int, dtype: np.dtype) -> float:
    """Below this, a trace ``s`` used as ``sqrt(s + eps)`` may be set to zero at each flush without leaving the rule.

    floor = (u/2) * eps * (1 - decay^every), u = finfo(dtype).eps / 2 the unit roundoff
    (2^-24 in float32, so u/2 = 2^-25). Proof: a part zeroed at a flush would have decayed by
    ``decay`` per step; flushes are ``every`` steps apart, so at any later step the parts
    zeroed so far sum to less than floor * (1 + decay^every + decay^(2 every) + ...) =
    (u/2) * eps. ``s + eps`` thus moves by less than a relative u/2, under the rounding
    error of the addition itself; the step ``g / sqrt(s + eps)`` by less than u/4.
    ``decay = 1`` (AdaGrad's sum, which never shrinks and so never needs flushing) gives 0.
    Adam passes ``eps * c2`` (its root holds ``s + eps * c2``, c2 = 1 - beta2^t, growing in t).
    """
    return float(np.finfo(dtype).eps) / 4.0 * eps * (1.0 - decay ** every)


def flush_interval(decays: Iterable[float]) -> int:
    """Steps between flushes: the largest K <= 64 with beta^K >= 2^-40 for every decay beta in (0, 1)."""
    k = 64
    for beta in decays:
        if 0.0 < beta < 1.0:
            k = min(k, max(1, int(math.log(_FLUSH_SHRINK) / math.log(beta))))
    return k


class Optimizer:
    """Shared front of every optimizer: clipping, weight decay, step count, state I/O.

    ``params``: name -> array (updated in place by :meth:`step`); ``names``: the trainable
    ones (default: every name), all of one float dtype. ``state[slot][name]`` are views
    into one flat zero-initialised buffer per slot, allocated here once. ``fused``: True
    for the compiled one-pass step (needs numba), False for the NumPy passes, None (default)
    for what ``$DNNSPEC_FUSED`` says, which is the fused step whenever numba is installed.
    """

    kind = "optimizer"
    slots: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray], names: Iterable[str] | None = None, *,
                 lr: float = 0.01, weight_decay: float = 0.0, decay_mode: str = "l2",
                 clip_norm: float = 0.0, fused: bool | None = None) -> None:
        self.names = list(params if names is None else names)
        self.shapes = {n: params[n].shape for n in self.names}
        self.dtype = np.result_type(*[params[n].dtype for n in self.names]) if self.names else np.float32
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decay_mode = decay_mode
        self.clip_norm = float(clip_norm)
        self.t = 0
        self._flat = {slot: self._buffer(zero=True) for slot in self.slots}
        self.state = {slot: self._views(buf) for slot, buf in self._flat.items()}
        self._tmp_flat = self._buffer()
        self._tmp = self._views(self._tmp_flat)
        self._sq_flat = self._buffer()  # g*g, for the optimizers that need it
        self._sq = self._views(self._sq_flat)
        needs_g = self.clip_norm > 0.0 or (self.weight_decay > 0.0 and decay_mode == "l2")
        self._g = self._views(self._buffer()) if needs_g else {}
        self._flush_every = flush_interval(self.decays())
        self._flush_below = np.finfo(self.dtype).tiny * _FLUSH_ABOVE_TINY
        self._sizes = {n: math.prod(s) for n, s in self.shapes.items()}
        self._offsets = list(zip(self.names, np.cumsum([0] + [self._sizes[n] for n in self.names[:-1]]).tolist()))
        self._kernels = _fused.kernels(fused)
        self._all = self._segments(0, self._tmp_flat.size)
        self._calls: tuple[list, list] | None = None  # _whole_calls' views and the arrays they view

    @property
    def fused(self) -> bool:
        """Whether :meth:`step` runs the compiled kernels (else the NumPy passes)."""
        return self._kernels is not None

    def _buffer(self, zero: bool = False) -> np.ndarray:
        size = sum(math.prod(s) for s in self.shapes.values())
        return np.zeros(size, self.dtype) if zero else np.empty(size, self.dtype)

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for n, shape in self.shapes.items():
            size = math.prod(shape)
            out[n] = flat[i:i + size].reshape(shape)
            i += size
        return out

    def decays(self) -> tuple[float, ...]:
        """The decay rates of this optimizer's exponentially decaying traces (for flushing)."""
        return ()

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             lr: float | None = None, grad_norm: float | None = None) -> None:
        """One update of every trainable array in ``params``, in place; ``grads`` is left as given.

        ``grads[name]`` has the shape of ``params[name]``; ``grad_norm`` may pass the
        global norm when the caller already computed it (used for clipping).
        """
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        if self._kernels is not None and self._fits_kernels(params):
            self._fused_step(params, grads, lr, grad_norm)
            return
        gs = self._effective_grads(params, grads, grad_norm)
        if self.decay_mode == "decoupled" and self.weight_decay > 0.0:
            # w - lr*dir - lr*wd*w == w*(1 - lr*wd) - lr*dir, since no direction reads w
            keep = 1.0 - lr * self.weight_decay
            for n in self.names:
                if is_decayed(n):
                    params[n] *= params[n].dtype.type(keep)
        self._update(params, gs, lr)
        if self.slots and self.t % self._flush_every == 0:
            self._flush_tiny()

    def _effective_grads(self, params, grads, grad_norm):
        """The gradients after clipping and l2 decay, in scratch buffers (the caller's are untouched)."""
        if not self._g:
            return grads
        scale = self._clip_scale(grads, grad_norm)
        l2 = self.weight_decay if self.decay_mode == "l2" else 0.0
        for n in self.names:
            g = np.multiply(grads[n], scale, out=self._g[n])
            if l2 and is_decayed(n):
                g += l2 * params[n]
        return self._g

    def _clip_scale(self, grads, grad_norm) -> float:
        """min(1, clip_norm / ||grads||), 1 without clipping."""
        if self.clip_norm > 0.0:
            norm = global_norm(grads, self.names) if grad_norm is None else grad_norm
            if norm > self.clip_norm:
                return self.clip_norm / norm
        return 1.0

    def _update(self, params, grads, lr: float) -> None:
        """w <- w - lr * direction(g) for every trainable array; subclasses implement it."""
        raise NotImplementedError

    # --- the fused path (numba; see fused_kernels.py) -----------------------------

    def _fits_kernels(self, params) -> bool:
        """The kernels take flat views: every weight array C-contiguous and of the state's dtype."""
        return all(params[n].flags.c_contiguous and params[n].dtype == self.dtype for n in self.names)

    def _fused_kernel(self):
        """The compiled ``kernel(w, g, *state, c)`` of this optimizer."""
        raise NotImplementedError

    def _fused_scalars(self, lr: float) -> list[float]:
        """The optimizer's own scalars for its kernel, between the shared front and the flush floors."""
        raise NotImplementedError

    def _fused_step(self, params, grads, lr: float, grad_norm) -> None:
        """The whole update in one compiled pass per element: front, direction, state and flush.

        The same scalars as the NumPy path, cast to the dtype the same way, so the same bits:
        c = [scale, l2, keep, *own scalars, *floors], where l2 and keep apply to kernels only
        and the floors are :meth:`flush_floors` on a flush step, 0 (nothing flushed) otherwise.
        A gradient of another dtype is cast to the state's first (the engine's never are).
        """
        scale = self._clip_scale(grads, grad_norm)
        floors = self.flush_floors() if self.slots and self.t % self._flush_every == 0 else {}
        own = self._fused_scalars(lr) + [floors.get(slot, 0.0) for slot in self.slots]
        wd = self.weight_decay
        l2 = wd if self.decay_mode == "l2" else 0.0
        keep = 1.0 - lr * wd if self.decay_mode == "decoupled" else 1.0
        plain = np.array([scale, 0.0, 1.0, *own], self.dtype)
        decayed = np.array([scale, l2, keep, *own], self.dtype)
        kernel, slots = self._fused_kernel(), [self._flat[slot] for slot in self.slots]
        size = self._tmp_flat.size
        split = threads.active() and size >= FUSED_SPLIT_MIN
        calls = None if split else self._whole_calls(params, grads, slots)
        if calls is not None:  # the usual step: every argument a view made once
            for args, decay in calls:
                kernel(*args, decayed if decay else plain)
            return
        flat = {n: np.ascontiguousarray(grads[n], self.dtype).reshape(-1) for n in self.names}

        def piece(lo: int, hi: int) -> None:  # flat positions lo..hi-1 of every state buffer
            for n, a, b, f in self._all if (lo, hi) == (0, size) else self._segments(lo, hi):
                c = decayed if is_decayed(n) else plain
                kernel(params[n].reshape(-1)[a:b], flat[n][a:b], *[st[f:f + b - a] for st in slots], c)

        if split:
            parallel(piece, size, size)
        else:
            piece(0, size)

    def _whole_calls(self, params, grads, slots) -> list[tuple[tuple[np.ndarray, ...], bool]] | None:
        """Each array's kernel arguments (flat views of weight, gradient, state) and whether it decays.

        Made once and kept while ``params`` and ``grads`` hold the very same arrays (the
        engine's buffers do, step after step): building the views cost ~15 µs a step, a
        quarter of an MLP's whole fused Adam. None when a gradient would need a copy.
        """
        kept = self._calls
        if kept is not None and all(params[n] is p and grads[n] is g for n, p, g in kept[0]):
            return kept[1]
        if not all(grads[n].flags.c_contiguous and grads[n].dtype == self.dtype for n in self.names):
            return None
        calls = [((params[n].reshape(-1), grads[n].reshape(-1), *[st[f:f + b - a] for st in slots]), is_decayed(n))
                 for n, a, b, f in self._all]
        self._calls = ([(n, params[n], grads[n]) for n in self.names], calls)
        return calls

    def _segments(self, lo: int, hi: int) -> list[tuple[str, int, int, int]]:
        """(name, a, b, flat start) for each array overlapping flat positions [lo, hi): its elements a..b-1."""
        out = []
        for n, start in self._offsets:
            size = self._sizes[n]
            a, b = max(lo, start) - start, min(hi, start + size) - start
            if a < b:
                out.append((n, a, b, start + a))
        return out

    def _apply(self, params) -> None:
        """w <- w - tmp for each array: the last per-array pass of every update."""
        for n in self.names:
            params[n] -= self._tmp[n]

    def flush_floors(self) -> dict[str, float]:
        """Slot -> the |x| below which a flush sets its entries to zero (0: never flushed).

        Here: every slot below ``tiny * 2^44``, right for traces outside any square root.
        Optimizers with a trace under ``sqrt(s + eps)`` lower its floor to :func:`root_flush_floor`.
        """
        return dict.fromkeys(self.slots, self._flush_below)

    def _flush_tiny(self) -> None:
        """Zero the state entries below :meth:`flush_floors` (keeps decaying traces out of subnormals)."""
        for slot, floor in self.flush_floors().items():
            if floor > 0.0:
                buf = self._flat[slot]
                np.putmask(buf, np.abs(buf) < buf.dtype.type(floor), 0)

    # --- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat name -> array: ``t`` and ``<slot>/<param name>`` for each state array."""
        out: dict[str, np.ndarray] = {"t": np.array(self.t, dtype=np.int64)}
        for slot, arrays in self.state.items():
            for n, a in arrays.items():
                out[f"{slot}/{n}"] = a
        return out

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        """Copy a :meth:`state_dict` back into the preallocated state; KeyError/ValueError if it does not fit."""
        self.t = int(d["t"])
        for slot, arrays in self.state.items():
            for n, a in arrays.items():
                src = np.asarray(d[f"{slot}/{n}"])
                if src.shape != a.shape:
                    raise ValueError(f"optimizer state {slot}/{n}: expected shape {a.shape}, found {src.shape}")
                a[...] = src


class SGD(Optimizer):
    """Stochastic gradient descent; plain SGD is momentum SGD with momentum 0 (no buffer).

    momentum mu > 0:  v <- mu*v + g;  w <- w - lr*v            (heavy ball)
    nesterov:         v <- mu*v + g;  w <- w - lr*(g + mu*v)   (look-ahead form)
    mu = 0:           w <- w - lr*g                            (the lecture's SGD)
    """

    kind = "sgd"

    def __init__(self, params, names=None, *, momentum: float = 0.0, nesterov: bool = False, **kw) -> None:
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slots = ("v",) if self.momentum > 0.0 else ()
        super().__init__(params, names, **kw)

    def decays(self):
        return (self.momentum,)

    def _fused_kernel(self):
        return self._kernels.momentum if self.slots else self._kernels.sgd

    def _fused_scalars(self, lr):
        return [lr, self.momentum, float(self.nesterov)] if self.slots else [lr]

    def _update(self, params, grads, lr):
        tmp = self._tmp_flat
        if not self.slots:
            for n in self.names:
                np.multiply(grads[n], lr, out=self._tmp[n])
            return self._apply(params)
        v = self._flat["v"]
        v *= v.dtype.type(self.momentum)
        for n in self.names:
            self.state["v"][n] += grads[n]
        if self.nesterov:
            np.multiply(v, self.momentum, out=tmp)
            for n in self.names:
                self._tmp[n] += grads[n]
            tmp *= tmp.dtype.type(lr)
        else:
            np.multiply(v, lr, out=tmp)
        self._apply(params)


class AdaGrad(Optimizer):
    """AdaGrad (lecture):  s <- s + g*g;  w <- w - lr * g / sqrt(s + eps), eps = 1e-10 inside the root."""

    kind = "adagrad"
    slots = ("s",)

    def __init__(self, params, names=None, *, eps: float = 1e-10, **kw) -> None:
        self.eps = float(eps)
        super().__init__(params, names, **kw)

    def s_decay(self) -> float:
        """The factor ``s`` is multiplied by each step: 1 for AdaGrad's sum."""
        return 1.0

    def flush_floors(self) -> dict[str, float]:
        """``s`` sits under sqrt(s + eps): zeroed only where that moves no step (never, for AdaGrad)."""
        floor = root_flush_floor(self.eps, self.s_decay(), self._flush_every, self.dtype)
        return {"s": min(self._flush_below, floor)}

    def _fused_kernel(self):
        return self._kernels.root

    def _fused_scalars(self, lr):
        """lr, beta, 1 - beta, eps, decaying: AdaGrad's sum is ``s + g*g``, not ``1*s + 0*g*g``."""
        beta = self.s_decay()
        return [lr, beta, 1.0 - beta, self.eps, float(beta != 1.0)]

    def _update(self, params, grads, lr):
        for n in self.names:
            np.multiply(grads[n], grads[n], out=self._sq[n])
        self._flat["s"] += self._sq_flat
        self._divide_by_root(params, grads, lr)

    def _divide_by_root(self, params, grads, lr):
        """w <- w - lr * g / sqrt(s + eps), shared by AdaGrad and RMSProp."""
        tmp = self._tmp_flat
        np.add(self._flat["s"], self.eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        for n in self.names:
            np.divide(grads[n], self._tmp[n], out=self._tmp[n])
        tmp *= tmp.dtype.type(lr)
        self._apply(params)


class RMSProp(AdaGrad):
    """RMSProp (lecture):  s <- beta*s + (1-beta)*g*g;  w <- w - lr * g / sqrt(s + eps).

    AdaGrad with an exponentially decaying ``s`` instead of a sum.
    """

    kind = "rmsprop"

    def __init__(self, params, names=None, *, beta: float = 0.9, eps: float = 1e-10, **kw) -> None:
        self.beta = float(beta)
        super().__init__(params, names, eps=eps, **kw)

    def decays(self):
        return (self.beta,)

    def s_decay(self) -> float:
        return self.beta

    def _update(self, params, grads, lr):
        for n in self.names:
            np.multiply(grads[n], grads[n], out=self._sq[n])
        _ema(self._flat["s"], self._sq_flat, self.beta)
        self._divide_by_root(params, grads, lr)


class Adam(Optimizer):
    """Adam with the lecture's two slips corrected (the step is subtracted; m_hat, s_hat are separate).

    m <- b1*m + (1-b1)*g;  s <- b2*s + (1-b2)*g*g             (t counts steps from 1)
    m_hat = m / (1-b1^t);  s_hat = s / (1-b2^t)               (temporaries; m and s keep their values)
    w <- w - lr * m_hat / sqrt(s_hat + eps)

    Computed as  w <- w - (lr*sqrt(c2)/c1) * m / sqrt(s + eps*c2)  with c_i = 1 - b_i^t,
    the same value with the scalar factors folded together (one pass less per factor).

    amsgrad=true (Reddi et al. 2018): a third slot v <- max(v, s) (v starts at 0) replaces s in
    the denominator, w <- w - (lr*sqrt(c2)/c1) * m / sqrt(v + eps*c2), so the per-weight step
    size never grows. Both paths implement it (fused_kernels.adam_amsgrad), with the same bits.
    """

    kind = "adam"

    def __init__(self, params, names=None, *, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, amsgrad: bool = False, **kw) -> None:
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.amsgrad = bool(amsgrad)
        self.slots = ("m", "s", "v") if self.amsgrad else ("m", "s")
        super().__init__(params, names, **kw)

    def decays(self):
        return (self.beta1, self.beta2)

    def flush_floors(self) -> dict[str, float]:
        """``m`` as any trace; ``s`` only where zeroing it cannot move ``sqrt(s + eps*c2)`` (root_flush_floor)."""
        c2 = 1.0 - self.beta2 ** self.t
        floor = root_flush_floor(self.eps * c2, self.beta2, self._flush_every, self.dtype)
        floors = {"m": self._flush_below, "s": min(self._flush_below, floor)}
        if self.amsgrad:  # v is a running maximum, not a decaying trace, but it sits under the root as s
            floors["v"] = floors["s"]
        return floors

    def _fused_kernel(self):
        return self._kernels.adam_amsgrad if self.amsgrad else self._kernels.adam

    def _fused_scalars(self, lr):
        """b1, 1 - b1, b2, 1 - b2, eps*c2, lr*sqrt(c2)/c1: the NumPy path's folded scalars."""
        c1, c2 = 1.0 - self.beta1 ** self.t, 1.0 - self.beta2 ** self.t
        return [self.beta1, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2, self.eps * c2, lr * math.sqrt(c2) / c1]

    def _update(self, params, grads, lr):
        m, s, tmp, sq = self._flat["m"], self._flat["s"], self._tmp_flat, self._sq_flat
        v = self._flat.get("v")
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        t = m.dtype.type
        b1, a1, eps, step = t(self.beta1), t(1.0 - self.beta1), self.eps * c2, t(lr * math.sqrt(c2) / c1)

        def piece(lo: int, hi: int) -> None:  # flat positions lo..hi-1 of every state buffer
            segments = self._segments(lo, hi)
            for n, a, b, f in segments:
                g = grads[n].reshape(-1)[a:b]
                np.multiply(g, g, out=sq[f:f + b - a])
                np.multiply(g, a1, out=tmp[f:f + b - a])
            mm, tt = m[lo:hi], tmp[lo:hi]
            mm *= b1
            mm += tt
            _ema(s[lo:hi], sq[lo:hi], self.beta2)
            if v is not None:
                np.maximum(v[lo:hi], s[lo:hi], out=v[lo:hi])
            np.add((s if v is None else v)[lo:hi], eps, out=tt)      # c2 * (s_hat + eps)
            np.sqrt(tt, out=tt)
            np.divide(mm, tt, out=tt)
            tt *= step
            for n, a, b, f in segments:
                w = params[n]
                if a == 0 and b == w.size:  # the whole array: any memory layout
                    w -= tmp[f:f + b].reshape(w.shape)
                else:                       # part of it (split runs only): a view of a contiguous array
                    w.reshape(-1)[a:b] -= tmp[f:f + b - a]

        if all(params[n].flags.c_contiguous for n in self.names):
            parallel(piece, m.size, 12 * m.size)  # split over threads only inside threads.own_threads()
        else:
            piece(0, m.size)


def _ema(buf: np.ndarray, x: np.ndarray, beta: float) -> None:
    """buf <- beta*buf + (1-beta)*x in place; ``x`` is overwritten (scaled by 1-beta)."""
    x *= x.dtype.type(1.0 - beta)
    buf *= buf.dtype.type(beta)
    buf += x


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam}


def make_optimizer(step: Step, params: Mapping[str, np.ndarray], names: Iterable[str] | None = None) -> Optimizer:
    """The optimizer an IR ``optimizer`` statement describes (options as schema.OPTIMIZER binds them)."""
    opts = dict(step.options)
    return OPTIMIZERS[step.kind](params, names, **opts)


__all__ = ["OPTIMIZERS", "AdaGrad", "Adam", "Optimizer", "RMSProp", "SGD", "flush_interval", "global_norm",
           "is_decayed", "make_optimizer", "root_flush_floor"]
