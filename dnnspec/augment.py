"""On-the-fly data augmentation of image batches, vectorised over the batch.

``Augmenter(model.augment, model.input.shape, value_range)`` turns the spec's augment
block into a function ``aug(x, rng) -> x'`` on raw-unit NCHW float32 training batches.
Ops run in ``schema.AUGMENT_ORDER`` whatever order the spec writes them in:

=========== ==========================================================================
crop p      zero-pad p pixels on each side, cut an H x W window at a random offset
flip        reverse W (horizontal) or H (vertical) for a random subset (probability p)
translate a shift (tx, ty) uniform in [-a, a] pixels each (a fraction is times W, H)
rotate d    angle uniform in [-d, d] degrees; positive = counter-clockwise on screen
scale lo..hi zoom factor s uniform in [lo, hi] about the image centre
contrast    x <- m + f (x - m), m the image's mean over (C, H, W), f uniform in range
brightness  x <- x + b (hi - lo), b uniform in [-delta, delta] (value_range = (lo, hi))
erase       with probability p, fill one rectangle of area fraction in range (aspect
            ratio log-uniform in [0.3, 3.3]) with ``value``
=========== ==========================================================================

translate, rotate and scale form one affine map sampled once with bilinear
interpolation. With image coordinates x (column, to the right) and y (row, downward)
and centre c = ((W-1)/2, (H-1)/2), an output pixel p takes its value from the input at

    p_in = (1/s) R(-theta) (p - c - t) + c,   R(a) = [[cos a, -sin a], [sin a, cos a]]

in (x, -y) screen axes, so that theta = 90 deg equals ``np.rot90(img, 1, axes=(-2, -1))``
(counter-clockwise) and t = (tx, ty) moves the content right and down. Samples outside
the image read zeros. The result is clipped to ``value_range``; labels are unchanged.
Every random number comes from the ``rng`` argument, drawn for the whole batch in a
fixed order, so the same generator state gives the same batch.

mixup and cutmix (``schema.MIX_OPS``) mix pairs of examples, so their labels too:
``Mixer(model.augment, input_shape)`` gives ``mixer(x, rng) -> (x', mix)`` on the batch the
per-image ops produced, where ``mix = Mix(perm, lam)`` (or None: batch left alone) says that
example i is now lam parts example i and 1 - lam parts example perm[i]; the loss weights the
two labels the same way (``dnnspec.engine.losses``, ``mix=``). Per batch, one uniform u picks
the op: cutmix when u < p_cutmix, else mixup when u < p_cutmix + (1 - p_cutmix) p_mixup; then
lam ~ Beta(alpha, alpha) and a permutation of the batch (Zhang et al. 2018; Yun et al. 2019):

=========== ==========================================================================
mixup a     x <- lam x + (1 - lam) x[perm]
cutmix a    a box of side sqrt(1 - lam) times H and W, centred at a uniform pixel and cut
            at the border, is copied from x[perm]; lam <- 1 - box area / (H W), exactly
=========== ==========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import ir
from .schema import AUGMENT_ORDER, MIX_OPS

AFFINE = ("translate", "rotate", "scale")


class Augmenter:
    """A batch transform built from ``ir.Step``s (kinds and options of ``schema.AUGMENT``).

    ``input_shape``: ``(C, H, W)``; ``value_range``: ``(lo, hi)`` in raw input units.
    """

    def __init__(self, steps: Sequence[ir.Step], input_shape: tuple[int, ...],
                 value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"augmentation needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        unknown = [s.kind for s in steps if s.kind not in AUGMENT_ORDER]
        if unknown:
            raise ValueError(f"unknown augment op {unknown[0]!r}")
        per_image = [s for s in steps if s.kind not in MIX_OPS]  # mixup, cutmix: the Mixer's
        self.steps = tuple(sorted(per_image, key=lambda s: AUGMENT_ORDER.index(s.kind)))
        self.input_shape = tuple(int(d) for d in input_shape)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    @classmethod
    def from_model(cls, model: ir.Model, x: np.ndarray | None = None,
                   value_range: tuple[float, float] | None = None) -> Augmenter:
        """From ``model.augment``; the value range defaults to :func:`default_value_range` of ``x``."""
        if value_range is None:
            value_range = default_value_range(x, model.input.scale)
        return cls(model.augment, model.input.shape, value_range)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new float32 batch ``(N, C, H, W)``: ``x`` with every op applied, clipped to value_range."""
        out = np.array(x, dtype=np.float32, copy=True)
        if out.shape[1:] != self.input_shape:
            raise ValueError(f"augment expects batches of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {out.shape}")
        affine = [s for s in self.steps if s.kind in AFFINE]
        for step in self.steps:
            if step.kind in AFFINE:
                if step is affine[0]:
                    out = affine_sample(out, self._affine_matrices(affine, len(out), rng))
            else:
                out = getattr(self, "_" + step.kind)(out, step.options, rng)
        np.clip(out, *self.value_range, out=out)
        return out

    # --- ops, each (N, C, H, W) float32 -> (N, C, H, W) float32 -----------------------

    def _crop(self, x: np.ndarray, o: dict, rng: np.random.Generator) -> np.ndarray:
        p = int(o["padding"])
        offsets = rng.integers(0, 2 * p + 1, size=(len(x), 2))
        return crop(x, offsets[:, 0] - p, offsets[:, 1] - p) if p else x

    def _flip(self, x: np.ndarray, o: dict, rng: np.random.Generator) -> np.ndarray:
        mask = rng.random(len(x)) < o["p"]
        axis = -1 if o["direction"] == "horizontal" else -2
        x[mask] = np.flip(x[mask], axis=axis)
        return x

    def _affine_matrices(self, steps: list[ir.Step], n: int, rng: np.random.Generator) -> np.ndarray:
        _, h, w = self.input_shape
        theta, s, tx, ty = np.zeros(n), np.ones(n), np.zeros(n), np.zeros(n)
        for step in steps:
            o = step.options
            if step.kind == "translate":
                amount, unit = o["amount"]
                ax, ay = (amount, amount) if unit == "px" else (amount * w, amount * h)
                tx, ty = rng.uniform(-ax, ax, n), rng.uniform(-ay, ay, n)
            elif step.kind == "rotate":
                theta = rng.uniform(-o["degrees"], o["degrees"], n)
            else:
                s = rng.uniform(o["range"][0], o["range"][1], n)
        return affine_matrices(theta, s, tx, ty, h, w)

    def _contrast(self, x: np.ndarray, o: dict, rng: np.random.Generator) -> np.ndarray:
        f = rng.uniform(o["range"][0], o["range"][1], len(x)).astype(np.float32)[:, None, None, None]
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x -= mean
        x *= f
        x += mean
        return x

    def _brightness(self, x: np.ndarray, o: dict, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.value_range
        b = rng.uniform(-o["delta"], o["delta"], len(x)) * (hi - lo)
        x += b.astype(np.float32)[:, None, None, None]
        return x

    def _erase(self, x: np.ndarray, o: dict, rng: np.random.Generator) -> np.ndarray:
        n, (_, h, w) = len(x), self.input_shape
        on = rng.random(n) < o["p"]
        area = rng.uniform(o["area"][0], o["area"][1], n) * h * w
        ratio = np.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3), n))
        eh = np.clip(np.round(np.sqrt(area * ratio)), 1, h).astype(np.int64)
        ew = np.clip(np.round(np.sqrt(area / ratio)), 1, w).astype(np.int64)
        y0 = (rng.random(n) * (h - eh + 1)).astype(np.int64)
        x0 = (rng.random(n) * (w - ew + 1)).astype(np.int64)
        return erase(x, on, y0, x0, eh, ew, o["value"])


class Mix(NamedTuple):
    """How a batch was mixed: example i is ``lam`` parts itself and ``1 - lam`` parts example ``perm[i]``.

    ``perm``: (N,) intp permutation of the batch; ``lam`` in [0, 1]. Passed to the loss as
    ``mix=`` (targets ``lam t + (1 - lam) t[perm]``).
    """

    perm: np.ndarray
    lam: float

    def dominant(self, y: np.ndarray) -> np.ndarray:
        """The label with the larger weight per example: ``y`` when lam >= 1/2, else ``y[perm]``."""
        return y if self.lam >= 0.5 else y[self.perm]


class Mixer:
    """mixup and cutmix of a batch (see the module doc): ``mixer(x, rng) -> (x', Mix or None)``.

    ``steps``: the augment block (other ops are ignored); ``input_shape``: ``(C, H, W)``, or
    ``(F,)`` for mixup alone.
    """

    def __init__(self, steps: Sequence[ir.Step], input_shape: tuple[int, ...]) -> None:
        ops = {s.kind: dict(s.options) for s in steps if s.kind in MIX_OPS}
        self.cutmix, self.mixup = ops.get("cutmix"), ops.get("mixup")
        if self.cutmix is not None and len(input_shape) != 3:
            raise ValueError(f"cutmix needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        self.input_shape = tuple(int(d) for d in input_shape)

    @classmethod
    def from_model(cls, model: ir.Model) -> Mixer | None:
        """The model's Mixer, or None when its augment block has neither mixup nor cutmix."""
        if not any(s.kind in MIX_OPS for s in model.augment):
            return None
        return cls(model.augment, model.input.shape)

    def _choose(self, u: float) -> str | None:
        pc = self.cutmix["p"] if self.cutmix is not None else 0.0
        if u < pc:
            return "cutmix"
        if self.mixup is not None and u < pc + (1.0 - pc) * self.mixup["p"]:
            return "mixup"
        return None

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Mix | None]:
        """``x`` (N, *input_shape) -> (a new float batch, Mix) or (``x`` itself, None) when not mixed.

        Draws, in order: u (which op), lam ~ Beta(alpha, alpha), the permutation, then the
        box centre (cutmix). A float32 or float64 batch keeps its dtype; others become float32.
        """
        op = self._choose(float(rng.random()))
        if op is None:
            return x, None
        lam = float(rng.beta(getattr(self, op)["alpha"], getattr(self, op)["alpha"]))
        perm = rng.permutation(len(x))
        out = np.array(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float32, copy=True)
        if op == "mixup":
            return mixup(out, perm, lam), Mix(perm, lam)
        _, h, w = self.input_shape
        box = cutmix_box(lam, h, w, int(rng.integers(0, h)), int(rng.integers(0, w)))
        return cutmix(out, perm, box), Mix(perm, 1.0 - box_area(box) / (h * w))


def default_value_range(x: np.ndarray | None, scale: float = 1.0) -> tuple[float, float]:
    """The raw-unit range augmented values are clipped to.

    (0, 255) for uint8 data; else (0, 1/scale) (the range that ``scale`` maps to [0, 1]) when
    the data lies inside it; else the data's own (min, max).
    """
    if x is not None and x.dtype == np.uint8:
        return (0.0, 255.0)
    lo, hi = 0.0, 1.0 / scale
    if x is not None and x.size:
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo or xmax > hi:
            return (xmin, xmax)
    return (lo, hi)


# --- the vectorised cores, usable with explicit parameters ----------------------------


def affine_matrices(theta_deg: np.ndarray, s: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                    h: int, w: int) -> np.ndarray:
    """Per-example inverse maps ``(N, 2, 3)``: ``[x_in, y_in] = A @ [x_out, y_out, 1]``.

    Forward (output from input), about c = ((w-1)/2, (h-1)/2), with y downward and a
    positive angle counter-clockwise on screen:
    ``x' = s (cos t dx + sin t dy) + cx + tx``, ``y' = s (-sin t dx + cos t dy) + cy + ty``.
    Entries are rounded to 1e-9 so that 90-degree turns sample exact pixel centres.
    """
    t = np.deg2rad(np.asarray(theta_deg, np.float64))
    cos, sin = np.cos(t) / s, np.sin(t) / s
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    ux, uy = -cx - np.asarray(tx, np.float64), -cy - np.asarray(ty, np.float64)
    a = np.empty((len(t), 2, 3))
    a[:, 0, 0], a[:, 0, 1], a[:, 0, 2] = cos, -sin, cos * ux - sin * uy + cx
    a[:, 1, 0], a[:, 1, 1], a[:, 1, 2] = sin, cos, sin * ux + cos * uy + cy
    return np.round(a, 9)


def affine_sample(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Bilinear resampling of ``x (N, C, H, W)`` at ``A @ [x, y, 1]`` per output pixel; outside reads 0.

    The batch is zero-padded by two pixels and flattened; the top-left neighbour's flat
    index is clipped into the pad (so a far-outside sample reads four zeros) and the other
    three are it plus 1, plus a row, plus both. Blend:
    ``out = a + wy (b - a)``, ``a = I00 + wx (I01 - I00)``, ``b = I10 + wx (I11 - I10)``.
    """
    n, c, h, w = x.shape
    gx = np.arange(w, dtype=np.float32)[None, None, :]
    gy = np.arange(h, dtype=np.float32)[None, :, None]
    a32 = a.astype(np.float32)[:, :, :, None, None]
    sx = a32[:, 0, 0] * gx + a32[:, 0, 1] * gy + a32[:, 0, 2]  # (N, H, W)
    sy = a32[:, 1, 0] * gx + a32[:, 1, 1] * gy + a32[:, 1, 2]
    x0, y0 = np.floor(sx), np.floor(sy)
    wx, wy = (sx - x0)[:, None], (sy - y0)[:, None]
    pw, ph = w + 4, h + 4
    col = np.clip(x0, -2, w).astype(np.intp) + 2
    row = np.clip(y0, -2, h).astype(np.intp) + 2
    padded = np.zeros((n, c, ph, pw), np.float32)
    padded[:, :, 2:-2, 2:-2] = x
    flat = padded.ravel()
    i00 = ((np.arange(n * c) * (ph * pw)).reshape(n, c, 1, 1) + (row * pw + col)[:, None]).ravel()
    i00_, i01, i10, i11 = (flat.take(i00 + d).reshape(n, c, h, w) for d in (0, 1, pw, pw + 1))
    top = i00_ + wx * (i01 - i00_)
    bottom = i10 + wx * (i11 - i10)
    return top + wy * (bottom - top)


def crop(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Per-example integer shift with zero fill: ``out[i, :, r, q] = x[i, :, r + dy_i, q + dx_i]``.

    This is "pad by p, crop an H x W window at offset (p + dy, p + dx)", done as one gather
    on the zero-padded batch. ``dy``, ``dx``: ``(N,)`` ints with ``|d| <= p``.
    """
    n, c, h, w = x.shape
    p = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    rows = (np.arange(h)[None, :] + (dy + p)[:, None])[:, None, :, None]
    cols = (np.arange(w)[None, :] + (dx + p)[:, None])[:, None, None, :]
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def erase(x: np.ndarray, on: np.ndarray, y0: np.ndarray, x0: np.ndarray, eh: np.ndarray, ew: np.ndarray,
          value: float) -> np.ndarray:
    """Fill rectangle ``[y0, y0+eh) x [x0, x0+ew)`` of each example where ``on`` with ``value`` (in place)."""
    _, _, h, w = x.shape
    r = np.arange(h)[None, :, None]
    q = np.arange(w)[None, None, :]
    mask = ((r >= y0[:, None, None]) & (r < (y0 + eh)[:, None, None])
            & (q >= x0[:, None, None]) & (q < (x0 + ew)[:, None, None]) & on[:, None, None])
    np.copyto(x, np.float32(value), where=mask[:, None])
    return x


def mixup(x: np.ndarray, perm: np.ndarray, lam: float) -> np.ndarray:
    """``x <- lam x + (1 - lam) x[perm]`` in place on float ``x`` (N, ...); returns ``x``."""
    other = x[perm]  # a copy: x is overwritten below
    x *= x.dtype.type(lam)
    other *= x.dtype.type(1.0 - lam)
    x += other
    return x


def cutmix_box(lam: float, h: int, w: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The box ``(y0, y1, x0, x1)`` (half-open) of cutmix: sides floor(sqrt(1 - lam) H) and
    floor(sqrt(1 - lam) W) centred at pixel (cy, cx), cut at the image border (Yun et al. 2019)."""
    r = math.sqrt(max(0.0, 1.0 - lam))
    bh, bw = int(h * r), int(w * r)
    y0, x0 = cy - bh // 2, cx - bw // 2
    return max(y0, 0), min(y0 + bh, h), max(x0, 0), min(x0 + bw, w)


def box_area(box: tuple[int, int, int, int]) -> int:
    y0, y1, x0, x1 = box
    return max(y1 - y0, 0) * max(x1 - x0, 0)


def cutmix(x: np.ndarray, perm: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Copy ``box`` = (y0, y1, x0, x1) of example perm[i] into example i, in place on ``x`` (N, C, H, W)."""
    y0, y1, x0, x1 = box
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]  # the right side is gathered (copied) first
    return x


__all__ = ["AFFINE", "Augmenter", "Mix", "Mixer", "affine_matrices", "affine_sample", "box_area", "crop", "cutmix",
           "cutmix_box", "default_value_range", "erase", "mixup"]
