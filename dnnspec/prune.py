"""Structured pruning: remove whole units (dense) and filters (conv2d) with the smallest scores.

A *producer* (a dense layer, or a conv2d with ``groups=1``) may lose output channels when
every path from its output ends in an *absorber* (a dense or ``groups=1`` conv2d that reads
it), passing only through layers that treat channels one by one:

* per-channel layers (batch norm, activations but softmax, dropout, pools, global pools):
  their parameters of shape (C,) keep the same channels;
* ``flatten``: channel c of a (C, H, W) image is features ``c*H*W .. (c+1)*H*W - 1``;
* ``concat``: input j's channel c is channel ``offset_j + c`` of the output.

Anything else on such a path (``add``, ``layernorm``, ``softmax``, a grouped conv2d, the
network's output) keeps the producer whole: channels joined by ``add`` (residual identity
paths included) would need one shared mask across all their producers, so they stay as
they are; the classes are never pruned. The absorbers' input weights follow the kept
channels (``kernel[kept_in]`` for dense, ``kernel[:, kept_in]`` for conv2d).

Score of a channel: ``|gamma_c|`` of the batch norm that is the producer's only reader
(after batch norm the channel's scale is gamma, whatever its kernel: network slimming,
Liu et al. 2017), else the L2 norm of its incoming weights (kernel column / filter).
Each producer keeps ``max(1, round(keep * width))`` channels, the highest scores.

Exactness: the pruned network computes what the original computes when the absorbers'
input weights of the removed channels are zero (``tests/test_prune.py`` checks this).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import ir
from .errors import UsageError

PRODUCERS = ("dense", "conv2d")
#: Kinds whose output channel c depends on input channel c alone (at inference).
PER_CHANNEL = ("batchnorm", "dropout", "maxpool", "avgpool", "global_avgpool", "global_maxpool", "relu",
               "leaky_relu", "elu", "gelu", "silu", "selu", "softplus", "sigmoid", "tanh")
#: Kinds that map channels to other positions (a range each).
MAPPING = ("flatten", "concat")
WIDTH = {"dense": "units", "conv2d": "filters"}


@dataclass
class Pruned:
    """The smaller model, its arrays, and per layer the original output channels it keeps (pruned ones only)."""

    model: ir.Model
    params: dict[str, np.ndarray]
    kept: dict[str, np.ndarray] = field(default_factory=dict)


def check_keep(keep: float) -> float:
    if not 0.0 < float(keep) <= 1.0:
        raise UsageError(f"--keep must be a fraction in (0, 1] (0.5 keeps half of each layer's units), found {keep}")
    return float(keep)


def _absorbs(layer: ir.Layer) -> bool:
    return layer.kind in PRODUCERS and int(layer.options.get("groups", 1) or 1) == 1


def prunable(model: ir.Model) -> list[str]:
    """The producers whose every downstream path ends in an absorber (see the module doc)."""
    readers, out = model.consumers, model.layers[-1].name
    return [lay.name for lay in model.layers if _absorbs(lay) and _paths_absorbed(model, lay.name, readers, out)]


def _paths_absorbed(model: ir.Model, name: str, readers: dict[str, tuple[str, ...]], out: str) -> bool:
    todo, seen = [name], set()
    while todo:
        t = todo.pop()
        if t == out or not readers.get(t):
            return False  # the network's output (classes), or an unread tensor
        for r in readers[t]:
            lay = model.layer(r)
            if _absorbs(lay):
                continue
            if lay.kind not in PER_CHANNEL + MAPPING:
                return False
            if r not in seen:
                seen.add(r)
                todo.append(r)
    return True


def scores(model: ir.Model, params: dict[str, np.ndarray], name: str) -> np.ndarray:
    """(C,) importance of each output channel of producer ``name``: |gamma| of its only reader when that is
    a batch norm, else the L2 norm of the channel's incoming weights."""
    readers = model.consumers.get(name, ())
    if len(readers) == 1 and model.layer(readers[0]).kind == "batchnorm":
        return np.abs(np.asarray(params[f"{readers[0]}.gamma"], dtype=np.float64))
    k = np.asarray(params[f"{name}.kernel"], dtype=np.float64)
    if model.layer(name).kind == "dense":  # (in, units)
        return np.sqrt((k * k).sum(axis=0))
    return np.sqrt((k * k).reshape(k.shape[0], -1).sum(axis=1))  # (F, C, kh, kw)


def choose(model: ir.Model, params: dict[str, np.ndarray], keep: float) -> dict[str, np.ndarray]:
    """Per prunable producer, the sorted indices of the channels it keeps (only those that lose some)."""
    kept = {}
    for name in prunable(model):
        s = scores(model, params, name)
        n = max(1, int(round(keep * len(s))))
        if n < len(s):
            kept[name] = np.sort(np.argsort(-s, kind="stable")[:n])
    return kept


def _channels(shape: tuple[int, ...]) -> int:
    return int(shape[0])


def propagate(model: ir.Model, kept: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """For each tensor (``input`` and every layer's output), the original channels it keeps (None: all)."""
    idx: dict[str, np.ndarray | None] = {ir.INPUT: None}
    for lay in model.layers:
        ins = [idx[n] for n in lay.inputs]
        if lay.kind in PRODUCERS:
            idx[lay.name] = kept.get(lay.name)
        elif lay.kind in PER_CHANNEL:
            idx[lay.name] = ins[0]
        elif lay.kind == "flatten" and ins[0] is not None and len(lay.in_shape) == 3:
            hw = int(np.prod(lay.in_shape[1:]))
            idx[lay.name] = (ins[0][:, None] * hw + np.arange(hw)).ravel()
        elif lay.kind == "concat" and any(i is not None for i in ins):
            offsets = np.cumsum([0] + [_channels(s) for s in lay.in_shapes])
            idx[lay.name] = np.concatenate([(np.arange(_channels(s)) if i is None else i) + o
                                            for i, s, o in zip(ins, lay.in_shapes, offsets)])
        else:
            idx[lay.name] = ins[0] if lay.kind == "flatten" else None  # flatten of a vector: the same features
    return idx


def _slice_params(lay: ir.Layer, params: dict[str, np.ndarray], in_idx: np.ndarray | None,
                  out_idx: np.ndarray | None) -> dict[str, np.ndarray]:
    """The layer's arrays with its kept input rows (absorbers) and kept channels (producers, per-channel)."""
    out = {}
    for p in lay.params:
        a = np.asarray(params[p.name])
        local = p.name.rsplit(".", 1)[1]
        if lay.kind == "dense" and local == "kernel":
            a = a[in_idx] if in_idx is not None else a
            a = a[:, out_idx] if out_idx is not None else a
        elif lay.kind == "conv2d" and local == "kernel":
            a = a[:, in_idx] if in_idx is not None else a
            a = a[out_idx] if out_idx is not None else a
        elif out_idx is not None and a.ndim == 1 and len(a) == _channels(lay.out_shape) and len(a) > 1:
            a = a[out_idx]  # bias, gamma, beta, running stats, per-channel alpha
        out[p.name] = np.ascontiguousarray(a)
    return out


def _smaller_layers(model: ir.Model, kept: dict[str, np.ndarray]) -> tuple[ir.Layer, ...]:
    """The layers rebuilt (shapes, parameters, FLOPs by the registry's rules) with the producers' new widths."""
    decls = []
    for lay in model.layers:
        opts = dict(lay.options)
        if lay.name in kept:
            opts[WIDTH[lay.kind]] = len(kept[lay.name])
        decls.append(ir.LayerDecl(lay.kind, opts, set(lay.explicit), lay.span, inputs=lay.inputs))
    return ir.build_layers(model.input.shape, decls)


def prune(model: ir.Model, params: dict[str, np.ndarray], keep: float) -> Pruned:
    """The model with each prunable producer cut to ``max(1, round(keep * width))`` channels, and its arrays.

    ``params``: every array of the network by name (``Saved.params``; ``input.mean``/``input.std``
    pass through). The new Model keeps the original's names, recipe and source path; its
    ``source`` is empty (``spec_text`` renders it).
    """
    check_keep(keep)
    kept = choose(model, params, keep)
    idx = propagate(model, kept)
    new = dict(params)
    for lay in model.layers:
        in_idx = idx[lay.inputs[0]] if _absorbs(lay) else None
        new.update(_slice_params(lay, params, in_idx, idx[lay.name]))
    smaller = replace(model, layers=_smaller_layers(model, kept), source="")
    return Pruned(smaller, {k: new[k] for k in params}, kept)


def spec_text(model: ir.Model) -> str:
    """The model as ``.dnn`` text (dnnspec.summary.render): every default written, the new widths."""
    from .summary import render

    return render(model)


def reparse(model: ir.Model) -> ir.Model:
    """The model parsed back from its rendered text (so that a file stores the spec text), with its data's
    class names; the same layers, names and shapes."""
    from . import frontend

    parsed = frontend.parse(spec_text(model), path=model.path, check_memory=False)
    return replace(parsed, task=model.task)


def count(model: ir.Model) -> tuple[int, int]:
    """(parameters, forward FLOPs per example) as ``dnnspec check`` counts them."""
    return sum(p.size for p in model.params), sum(lay.flops for lay in model.layers)


__all__ = ["PER_CHANNEL", "PRODUCERS", "Pruned", "check_keep", "choose", "count", "propagate", "prunable", "prune",
           "reparse", "scores", "spec_text"]

