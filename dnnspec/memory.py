"""How much memory training a spec takes, estimated from the IR before anything is allocated.

The front end refuses a spec whose estimate exceeds :func:`limit`, so that ``check``
and ``train`` both say so up front instead of ``train`` dying in an allocation. The
estimate follows what the engine keeps (float32, 4 bytes an element), with ``N`` the
``train`` batch and ``E = max(N, eval_batch(model))`` the batch of evaluation passes:

    parameters   4 * sum(size) * (weights + gradient + optimizer slots + 2 optimizer
                 scratch [+ 1 clipped/decayed gradient] + best-epoch copy)
                 (non-trainable batch-norm statistics: value + best copy)
    activations  4 * sum over layers of  N * backward_l + E * forward_l
    input        4 * E * 2 * input size            (the cast and normalised batch)
    augment      4 * N * per-example buffers of the augment ops (crop's padded copy,
                 the bilinear sampler's gathers and indices, mixup/cutmix's two batch copies)

``forward_l`` counts the per-example elements of the scratch arrays a layer's forward
pass keeps (its output, a conv's im2col matrix and padded input, batch norm's centred
input, ...) and ``backward_l`` those of its backward pass (its input gradient, masks),
as the ``scratch`` rule of the layer's kind in :mod:`dnnspec.registry` gives them;
each op keeps its arrays between steps, so they add up over the layers rather than
overlap. In a graph, an output read by several layers adds one array for the sum of
their gradients. It is an estimate, within about a factor of two of the peak; the data set
itself is not counted (``check`` does not know it).

Evaluation passes (validation, test) run ``EVAL_BATCH`` rows at a time, or fewer where
that many rows' forward scratch would take more than ``EVAL_SCRATCH`` (256 MiB) or a
quarter of the limit (:func:`eval_batch`): a conv net then evaluates in chunks that keep
its buffers small (fashion_resnet: 94 rows, 267 MB, where 2,048 rows took 5.8 GB and the
process peaked at 2.5 GB; its 4,096 images took 1.13 s against 1.33 s in 2,048-row
passes), and no network is refused for its evaluation batch, which the spec cannot set.

The limit is the machine's memory: the smaller of the physical memory and the cgroup
limit of this process, 8 GiB when neither can be read, or ``DNNSPEC_MEMORY_LIMIT``
(``16GiB``, ``512MB``, a byte count, or ``off``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import ir, registry
from .errors import NO_SPAN, Diagnostic, Span, UsageError
from .schema import MIX_OPS

BYTES = 4  # float32, the engine's training dtype
EVAL_BATCH = 2048  # the most rows of one evaluation pass (engine.trainer asks eval_batch)
EVAL_SCRATCH = 256 * 2**20  # the most bytes of one evaluation pass's forward scratch
FALLBACK_LIMIT = 8 * 2**30
ENV = "DNNSPEC_MEMORY_LIMIT"

@dataclass(frozen=True)
class Part:
    """One contributor: a layer (by name), the input pipeline or the augment block; sizes in bytes."""

    name: str
    what: str
    span: Span
    params: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.params + self.activations


@dataclass(frozen=True)
class Estimate:
    """The training memory of a model at one batch size, by part."""

    batch: int
    parts: tuple[Part, ...]

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def activations(self) -> int:
        return sum(p.activations for p in self.parts)

    @property
    def total(self) -> int:
        return self.params + self.activations

    @property
    def largest(self) -> Part:
        return max(self.parts, key=lambda p: p.total)


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def layer_elements(layer: ir.Layer) -> tuple[int, int]:
    """(forward, backward) scratch elements one example of ``layer`` keeps: its kind's ``scratch`` rule
    (dnnspec.registry), which follows what the engine op keeps (see the module doc)."""
    fwd, bwd = registry.KINDS[layer.kind].scratch(layer.options, list(layer.in_shapes), layer.out_shape)
    return int(fwd), int(bwd)


def _optimizer_copies(model: ir.Model) -> int:
    """Arrays per trainable parameter: weights, gradient, best copy, the optimizer's slots and scratch."""
    o = model.optimizer.options
    slots = {"sgd": 1 if o.get("momentum", 0.0) > 0 else 0, "adagrad": 1, "rmsprop": 1, "adam": 2}
    clipped = o.get("clip_norm", 0.0) > 0 or (o.get("weight_decay", 0.0) > 0 and o.get("decay_mode") == "l2")
    return 3 + slots.get(model.optimizer.kind, 2) + 2 + int(clipped)


def _layer_part(layer: ir.Layer, copies: int, n: int, e: int, readers: int = 1) -> Part:
    """A layer's parameters and scratch; an output that ``readers`` > 1 layers read adds the buffer
    in which the engine sums their gradients (engine/net.py, graphs)."""
    trainable = sum(p.size for p in layer.params if p.trainable)
    frozen = sum(p.size for p in layer.params if not p.trainable)
    fwd, bwd = layer_elements(layer)
    bwd += _size(layer.out_shape) if readers > 1 else 0
    return Part(layer.name, layer.kind, layer.span, BYTES * (copies * trainable + 2 * frozen),
                BYTES * (n * bwd + e * fwd))


def _augment_part(model: ir.Model, n: int) -> Part | None:
    """The augment block's per-batch buffers: the float copy, crop's padded batch, the sampler's arrays,
    and mixup/cutmix's mixed copy and shuffled partner batch (vector inputs take mixup only)."""
    if not model.augment:
        return None
    size = math.prod(model.input.shape)
    mixing = any(s.kind in MIX_OPS for s in model.augment)
    elements = 2 * size if mixing else 0  # the mixed batch and x[perm]
    if len(model.input.shape) == 3 and any(s.kind not in MIX_OPS for s in model.augment):
        c, h, w = model.input.shape
        elements += 2 * c * h * w
        for step in model.augment:
            if step.kind == "crop":
                p = int(step.options["padding"])
                elements += c * (h + 2 * p) * (w + 2 * p) + c * h * w
        if any(s.kind in ("translate", "rotate", "scale") for s in model.augment):
            # padded copy, 4 gathered corners, 4 flat int64 indices (2 elements each), blends;
            # per pixel: source coordinates, floors, weights and int64 rows/columns
            elements += 18 * c * (h + 4) * (w + 4) + 12 * h * w
    if not elements:
        return None
    span = model.augment[0].span
    return Part("augment", "augment", span, 0, BYTES * n * elements)


def _forward_elements(model: ir.Model) -> int:
    """Per-example forward scratch elements of the whole network, the input's two copies included."""
    return sum(layer_elements(layer)[0] for layer in model.layers) + 2 * _size(model.input.shape)


def scratch_rows(model: ir.Model, budget: int = EVAL_SCRATCH) -> int:
    """The most rows (at least 1) of one forward pass whose scratch fits ``budget`` bytes."""
    return max(1, budget // (BYTES * max(1, _forward_elements(model))))


def eval_batch(model: ir.Model) -> int:
    """Rows per evaluation pass: EVAL_BATCH, or fewer so that their forward scratch fits EVAL_SCRATCH and a
    quarter of the limit."""
    cap, _ = limit()
    return min(EVAL_BATCH, scratch_rows(model, EVAL_SCRATCH if cap is None else min(EVAL_SCRATCH, cap // 4)))


def estimate(model: ir.Model, batch: int | None = None) -> Estimate:
    """The training memory of ``model`` at ``batch`` (default: its ``train batch``)."""
    n = int(model.train["batch"]) if batch is None else int(batch)
    e = max(n, eval_batch(model))
    copies = _optimizer_copies(model)
    parts = [Part("input", "input", model.input.span, 0, BYTES * e * 2 * _size(model.input.shape))]
    readers = model.consumers
    parts += [_layer_part(layer, copies, n, e, len(readers[layer.name])) for layer in model.layers]
    aug = _augment_part(model, n)
    if aug is not None:
        parts.append(aug)
    return Estimate(n, tuple(parts))


def forward_bytes(model: ir.Model, batch: int) -> int:
    """Bytes of one inference pass at ``batch`` (parameters once, each layer's forward scratch)."""
    params = sum(p.size for p in model.params)
    return BYTES * (params + batch * _forward_elements(model))


# --- the limit ------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int | None:
    """``16GiB``, ``512MB``, ``2e9`` -> bytes; ``off`` / ``none`` / ``0`` -> None (no limit)."""
    t = text.strip().lower()
    if t in ("off", "none", "0"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]i?b?|b)?", t)
    if not m or (m.group(2) or "") not in _UNITS:
        raise UsageError(f"{ENV}={text!r} is not a size: write it like 16GiB, 512MB, a byte count, or off")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max", or v1's huge "unlimited" number
            return int(text)
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def limit() -> tuple[int | None, str]:
    """(bytes a spec may need, where that number comes from); bytes None = no limit."""
    env = os.environ.get(ENV)
    if env is not None:
        return parse_size(env), f"the limit {ENV}={env.strip()}"
    known = [(v, what) for v, what in ((_physical_memory(), "this machine's memory"),
                                       (_cgroup_limit(), "this container's memory limit")) if v]
    if not known:
        return FALLBACK_LIMIT, "the default limit (the machine's memory is unknown)"
    return min(known)


def fmt_bytes(n: int) -> str:
    """``1.5 GiB``: binary units, three significant digits."""
    for unit, scale in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                        ("KiB", 2**10)):
        if n >= scale:
            return f"{n // scale:,} {unit}" if n >= 1000 * scale else f"{n / scale:.3g} {unit}"
    return f"{n} B"


def check(model: ir.Model) -> Diagnostic | None:
    """A Diagnostic when training ``model`` needs more memory than :func:`limit`, else None."""
    cap, source = limit()
    est = estimate(model)
    if cap is None or est.total <= cap:
        return None
    big = est.largest
    what = f"layer {big.name} ({big.what})" if big.name not in ("input", "augment") else f"the {big.name}"
    if big.params >= big.activations:
        fix = f"its parameters with their gradients and optimizer state take {fmt_bytes(big.params)}: make it smaller"
    else:
        fix = (f"its activations at batch {est.batch} take {fmt_bytes(big.activations)}: use a smaller batch, "
               "or smaller layers up to it")
    return Diagnostic(
        f"training this network needs about {fmt_bytes(est.total)} of memory at batch {est.batch}, more than "
        f"the {fmt_bytes(cap)} of {source}; the largest part is {what}",
        big.span if big.span != NO_SPAN else model.span, f"{fix} ({ENV} sets the limit)")


def check_batch(model: ir.Model, batch: int) -> None:
    """UsageError when training ``model`` at ``batch`` (a ``--batch`` override) needs more than :func:`limit`."""
    cap, source = limit()
    est = estimate(model, batch)
    if cap is not None and est.total > cap:
        raise UsageError(f"--batch {batch}: training {model.name} needs about {fmt_bytes(est.total)} of memory at "
                         f"that batch, more than the {fmt_bytes(cap)} of {source}; use a smaller --batch")
