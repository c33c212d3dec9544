"""Find the network to export: a run folder, a training checkpoint or a saved model (.npz).

A training checkpoint holds the last epoch's weights and the best epoch's; export
uses the best ones (what early stopping restores), or the last when there are no best
weights. A run folder (of ``dnnspec train``: ``best.npz``, ``checkpoint.npz``, ``history.csv``)
is searched for its best-weights file, then a saved model, then its checkpoint; the
training summary (epochs, validation accuracy) comes from its checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import ir
from ..checkpoint import RUN_FILES, find_file, load_model, read_npz
from ..errors import CheckpointError

__all__ = ["RUN_FILES", "Source", "find_file", "load_source", "training_summary"]


@dataclass
class Source:
    """A trained model to export (its IR and float32 arrays), the file it came from, and a training summary
    for the ONNX metadata. No engine Net is built: the export reads the IR and the arrays."""

    model: ir.Model
    params: dict[str, np.ndarray]
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def net(self) -> Source:
        """The source itself, which has the ``.model`` and ``.params`` the exporter reads from a Net
        (``source.net.model`` keeps working where a Net used to stand)."""
        return self


def load_source(path: str | os.PathLike) -> Source:
    """Load the model and weights of a run folder or file, with its best weights when there are any.

    The training summary comes from the run's ``checkpoint.npz`` (or the file itself).
    """
    path = Path(path)
    saved = load_model(path, prefer_best=True, what="checkpoint")
    params = {k: np.asarray(v, dtype=np.float32) for k, v in saved.params.items()}  # what a float32 Net holds
    summary_meta, file = saved.meta, saved.path
    ckpt = path / "checkpoint.npz"
    if path.is_dir() and file != ckpt and ckpt.is_file():
        try:
            summary_meta = read_npz(ckpt, "checkpoint")[0]
        except CheckpointError:
            pass  # the summary is optional; the weights came from a good file
    best_weights = saved.best or file.name == "best.npz"
    summary = {**training_summary(summary_meta, best_weights), **_data_schema(saved.meta)}  # export/tabular.py
    return Source(saved.model, params, file, summary, path if path.is_dir() else None)


def _data_schema(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"data_schema": {...}}`` of a file's metadata (dnnspec.dataschema), or {}: it goes into the ONNX metadata."""
    from ..dataschema import META_KEY, from_meta

    schema = from_meta(meta)
    return {META_KEY: schema.to_dict()} if schema is not None else {}


def training_summary(meta: dict[str, Any], best: bool) -> dict[str, Any]:
    """Epochs trained and the final (or best) validation accuracy, from a checkpoint's metadata."""
    out: dict[str, Any] = {}
    history = meta.get("rows") or meta.get("history") or []
    if "epoch" in meta:
        out["epochs"] = int(meta["epoch"])
    elif history:
        out["epochs"] = len(history)
    rows = [r for r in history if isinstance(r, dict)]
    for key in ("val_accuracy", "val_acc"):
        accs = [r[key] for r in rows if r.get(key) is not None]
        if accs:
            out["final_val_accuracy"] = float(accs[-1])
            if best:
                out["best_val_accuracy"] = float(max(accs))
            break
    if meta.get("best_epoch") is not None:
        out["best_epoch"] = int(meta["best_epoch"])
    out["weights"] = "best" if best else "last"
    return out
