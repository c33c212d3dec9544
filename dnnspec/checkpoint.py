"""Saved networks and training checkpoints: ``.npz`` files without pickle, written atomically.

Layout of both kinds of file (``np.load(path, allow_pickle=False)`` reads them)::

    meta               uint8 array: UTF-8 JSON (format, kind, spec text, model JSON, dtype, ...);
                       format 1 for chains, 2 for graphs (layers that name their inputs)
    param/<name>       every array of net.params: weights, batch-norm running statistics,
                       input.mean / input.std
    best/<name>        (checkpoints) the weights of the best epoch so far
    opt/<key>          (checkpoints) the optimizer's state_dict: ``t``, ``m/<name>``, ...

Everything here is (model, arrays) data: saving reads ``.model``, ``.params`` and ``.dtype``
of whatever it is given, and loading (:func:`load_model`) returns the ``ir.Model`` and its
arrays without building a Net (``dnnspec.load`` in :mod:`dnnspec.api` builds one from them).

``meta["spec"]`` is the spec text; loading reparses it with :func:`dnnspec.frontend.parse`
to rebuild the Model. A model built in code (``ir.model_from_layers``) has no text, so
``meta["model"]`` also stores the IR as JSON (``Model.to_json``) and :func:`model_from_dict`
rebuilds it from that when the text is empty. Training checkpoints add the epoch, the
history rows, the random generator's state and the early-stopping bookkeeping to ``meta``.

Every problem with a file (missing, truncated, not ours, a parameter that does not match
the spec) raises :class:`~dnnspec.errors.CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import dataschema, fileio, ir
from .errors import CheckpointError
from .history import CHECKPOINT as CHECKPOINT_FILE

FORMAT_VERSION = 2
# Files of chains keep format 1, which every dnnspec reads; a graph (layers that name their inputs)
# is format 2, so that a dnnspec from before graphs says "upgrade" instead of misreading it.
CHAIN_FORMAT = 1
# Preferred file names in a run folder of 'dnnspec train', best first; any other *.npz comes after these.
RUN_FILES = ("best.npz", "model.npz", "checkpoint.npz", "last.npz")


# --- atomic writes ---------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Atomic write into a run folder (created when missing): see dnnspec.fileio."""
    return fileio.atomic_write(path, write, make_parents=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return fileio.atomic_write_text(path, text, make_parents=True)


def _encode_meta(meta: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


def write_npz(path: str | os.PathLike, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Atomically write ``meta`` (as JSON bytes) and ``arrays`` into one uncompressed .npz."""
    payload = {"meta": _encode_meta(meta), **{k: np.asarray(v) for k, v in arrays.items()}}
    return atomic_write(path, lambda f: np.savez(f, **payload))


def read_npz(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a file written by :func:`write_npz`; CheckpointError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what}; check the path (train first with 'dnnspec train SPEC')")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a {what} (.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({type(e).__name__}: {e}); "
                              f"restore it or train again") from None
    return _decode_meta(path, arrays.pop("meta", None), what), arrays


def read_meta(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Only the ``meta`` of a file of :func:`write_npz` (the arrays are not read); errors as :func:`read_npz`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}; check the path (train first with 'dnnspec train SPEC')")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta_bytes = z["meta"] if "meta" in z.files else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({type(e).__name__}: {e}); "
                              f"restore it or train again") from None
    return _decode_meta(path, meta_bytes, what)


def _decode_meta(path: Path, meta_bytes: np.ndarray | None, what: str) -> dict[str, Any]:
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8")) if meta_bytes is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{path}: not a dnnspec {what} (no readable 'meta' entry); "
                              f"use a file written by dnnspec train or Net.save")
    if meta["format"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: {what} format {meta['format']} is newer than this dnnspec "
                              f"understands ({FORMAT_VERSION}); upgrade dnnspec")
    return meta


# --- the model inside a file -------------------------------------------------------------


def model_meta(model: ir.Model) -> dict[str, Any]:
    """What a file stores to rebuild ``model``: the format, the spec text, its path, and the IR as JSON."""
    return {"format": CHAIN_FORMAT if model.is_chain else FORMAT_VERSION, "spec": model.source,
            "spec_path": model.path, "model": json.loads(model.to_json(indent=None))}


def model_from_meta(meta: Mapping[str, Any], where: str) -> ir.Model:
    """Reparse the stored spec text, or rebuild from the stored IR JSON when there is no text."""
    from .errors import SpecError

    text = meta.get("spec") or ""
    if text:
        from . import frontend

        try:
            # trained elsewhere: a smaller machine may still export or predict with it
            return frontend.parse(text, path=meta.get("spec_path") or "<checkpoint>", check_memory=False)
        except SpecError as e:
            raise CheckpointError(f"{where}: the spec stored in the file no longer parses "
                                  f"({e.diagnostics[0].message if e.diagnostics else e}); "
                                  f"use the dnnspec version that wrote it") from None
    try:
        return model_from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the stored model description is damaged ({e}); train again") from None


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _opts(d: Mapping[str, Any]) -> ir.FrozenDict:
    return ir.FrozenDict({k: _tuples(v) for k, v in d.items()})


def _step(d: Mapping[str, Any]) -> ir.Step:
    return ir.Step(d["kind"], _opts(d.get("options", {})), explicit=frozenset(d.get("explicit", ())))


def model_from_dict(d: Mapping[str, Any]) -> ir.Model:
    """Inverse of ``json.loads(Model.to_json())`` (spans are not kept; source is empty). A file written
    before graphs has no ``inputs``: its layers form a chain (ir.Model links them)."""
    layers = tuple(
        ir.Layer(lay["name"], lay["kind"], _opts(lay["options"]), tuple(lay["in_shape"]), tuple(lay["out_shape"]),
                 tuple(ir.ParamSpec(**{**p, "shape": tuple(p["shape"])}) for p in lay["params"]),
                 explicit=frozenset(lay.get("explicit", ())), flops=lay.get("flops", 0),
                 inputs=tuple(lay.get("inputs", ())), in_shapes=tuple(tuple(s) for s in lay.get("in_shapes", ())))
        for lay in d["layers"])
    inp, task, norm = d["input"], d["task"], d.get("normalize", {})
    return ir.Model(
        name=d["name"],
        input=ir.Input(inp["kind"], tuple(inp["shape"]), inp.get("scale", 1.0)),
        layers=layers,
        task=ir.Task(task["kind"], task.get("classes", 0), tuple(task.get("class_names", ())), task.get("targets", 0)),
        loss=_step(d["loss"]), optimizer=_step(d["optimizer"]), schedule=_step(d["schedule"]),
        train=_opts(d["train"]),
        normalize=ir.Normalize(norm.get("mode", "none"), tuple(norm.get("mean", ())), tuple(norm.get("std", ()))),
        augment=tuple(_step(a) for a in d.get("augment", ())),
        data=d.get("data"), path=d.get("path", "<string>"))


# --- parameters ----------------------------------------------------------------------


def restore_params(params: dict[str, np.ndarray], arrays: Mapping[str, np.ndarray], where: str,
                   prefix: str = "param/", check_only: bool = False) -> None:
    """Copy ``arrays[prefix + name]`` into each ``params[name]`` in place, checking names and shapes first."""
    found = check_arrays({name: target.shape for name, target in params.items()}, arrays, where, prefix)
    if check_only:
        return
    for name, target in params.items():
        target[...] = found[name]


def check_arrays(shapes: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray], where: str,
                 prefix: str = "param/") -> dict[str, np.ndarray]:
    """``{name: arrays[prefix + name]}`` when the file's arrays under ``prefix`` are exactly ``shapes``;
    else CheckpointError naming the first missing, misshapen or unexpected one."""
    found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    for name, shape in shapes.items():
        if name not in found:
            raise CheckpointError(f"{where}: the spec has parameter {name} {_shape(shape)} but the file "
                                  f"does not; was it saved from another spec?")
        if found[name].shape != tuple(shape):
            raise CheckpointError(f"{where}: parameter {name}: the spec expects shape {_shape(shape)}, "
                                  f"the file holds {_shape(found[name].shape)}; the spec changed since it was saved")
    extra = sorted(set(found) - set(shapes))
    if extra:
        raise CheckpointError(f"{where}: the file has parameter {extra[0]} that the spec does not declare; "
                              f"was it saved from another spec?")
    return found


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v for k, v in arrays.items()}


# --- whole networks: Net.save / dnnspec.load ------------------------------------------------


def save_net(net: Any, path: str | os.PathLike) -> Path:
    """Write ``net`` (a Net, or anything with ``.model``, ``.params`` and ``.dtype``) to ``path`` (.npz), atomically."""
    return save_model(path, net.model, net.params, net.dtype, dataschema.meta_entry(net))


def save_model(path: str | os.PathLike, model: ir.Model, params: Mapping[str, np.ndarray], dtype: Any,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` and every array of its network (``params``) to ``path`` (.npz), atomically.

    ``extra``: more metadata (the ``data_schema`` record of dnnspec.dataschema)."""
    meta = {"kind": "net", "dtype": np.dtype(dtype).name, **model_meta(model), **(extra or {})}
    return write_npz(path, meta, _prefixed("param/", params))


def find_file(path: Path) -> Path:
    """The checkpoint or model file of ``path``: the file itself, or the best one of a run folder (RUN_FILES)."""
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint; train first with 'dnnspec train SPEC'")
    for name in RUN_FILES:
        if (path / name).is_file():
            return path / name
    others = sorted(path.glob("*.npz"))
    if others:
        return others[0]
    raise CheckpointError(f"{path}: this folder holds no checkpoint or model (.npz); "
                          "give the run folder written by 'dnnspec train' or a checkpoint file")


@dataclass
class Saved:
    """A trained model as data: its IR, every array of its network by name, and the file it came from.

    ``params`` holds the best epoch's weights (``best``) or the last ones; ``meta`` is the
    file's metadata (``dtype``, the training state of a checkpoint).
    """

    model: ir.Model
    params: dict[str, np.ndarray]
    path: Path
    meta: dict[str, Any]
    best: bool = False

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.get("dtype", "float32"))


def load_model(path: str | os.PathLike, *, prefer_best: bool | None = None, what: str = "model file") -> Saved:
    """The model and arrays of a file of :func:`save_net`, a training checkpoint or a run folder.

    A run folder gives its best file (:func:`find_file`). ``prefer_best`` (default: only for
    a run folder): take a checkpoint's ``best/`` weights when it holds all of them, else its
    last (``param/``) ones. The arrays are checked against the names and shapes the spec implies
    (:attr:`ir.Model.arrays`): CheckpointError naming the file otherwise.
    """
    path = Path(path)
    folder = path.is_dir()
    file = find_file(path) if folder else path
    meta, arrays = read_npz(file, what)
    model = dataschema.apply(model_from_meta(meta, str(file)), dataschema.from_meta(meta))  # data's class names
    wanted = model.arrays
    best = (folder if prefer_best is None else prefer_best) and all(f"best/{k}" in arrays for k in wanted)
    params = check_arrays(wanted, arrays, str(file), "best/" if best else "param/")
    return Saved(model, {name: params[name] for name in wanted}, file, meta, best)


# --- training checkpoints --------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A training checkpoint as read back: metadata and the three groups of arrays."""

    meta: dict[str, Any]
    params: dict[str, np.ndarray]
    best: dict[str, np.ndarray] = field(default_factory=dict)
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])


def save_checkpoint(path: str | os.PathLike, net: Any, optimizer_state: Mapping[str, np.ndarray],
                    best: Mapping[str, np.ndarray] | None, state: Mapping[str, Any]) -> Path:
    """Atomically write a training checkpoint: weights, best weights, optimizer state, ``state`` (JSON).

    ``state`` holds the epoch, history rows, random generator state and early-stopping
    bookkeeping; it must be JSON-serialisable.
    """
    meta = {"kind": "checkpoint", "dtype": net.dtype.name, **model_meta(net.model), **dataschema.meta_entry(net),
            **state}
    arrays = {**_prefixed("param/", net.params), **_prefixed("opt/", optimizer_state)}
    if best:
        arrays.update(_prefixed("best/", best))
    return write_npz(path, meta, arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a training checkpoint (CheckpointError if it is missing, damaged or not a checkpoint)."""
    meta, arrays = read_npz(path, "checkpoint")
    if meta.get("kind") != "checkpoint" or "epoch" not in meta:
        raise CheckpointError(f"{path}: a saved model, not a training checkpoint; it cannot be resumed")

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Checkpoint(meta, group("param/"), group("best/"), group("opt/"), str(path))


def split_state(run: str | os.PathLike) -> dict[str, Any] | None:
    """The generator state run folder ``run`` drew its validation split from, or None (no checkpoint there).

    A run that continues another's weights (``prune --finetune``, ``train --init``) draws its split
    from this state, so that on the same data it validates on the same held-out examples rather
    than on examples the weights were trained on.
    """
    path = Path(run) / CHECKPOINT_FILE if Path(run).is_dir() else None
    if path is None or not path.is_file():
        return None
    state = read_meta(path).get("rng_split")
    return state if isinstance(state, dict) else None


def check_same_spec(ckpt: Checkpoint, net: Any) -> None:
    """CheckpointError when the checkpoint's parameters do not fit ``net`` (name and shapes)."""
    restore_params(net.params, _prefixed("param/", ckpt.params), ckpt.path, check_only=True)


__all__ = ["FORMAT_VERSION", "Checkpoint", "split_state", "atomic_write", "atomic_write_text",
           "Saved", "check_arrays", "check_same_spec", "find_file", "load_checkpoint", "load_model", "model_from_dict",
           "model_from_meta", "read_meta", "read_npz", "restore_params", "save_checkpoint", "save_model", "save_net",
           "write_npz"]
