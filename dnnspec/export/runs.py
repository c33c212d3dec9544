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

from ..errors import CheckpointError

# Preferred file names in a run folder, best first; any other *.npz comes after these.
RUN_FILES = ("best.npz", "model.npz", "checkpoint.npz", "last.npz")


@dataclass
class Source:
    """A loaded network, the file it came from, and a training summary for the ONNX metadata."""

    net: Any
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


def find_file(path: Path) -> Path:
    """The checkpoint or model file to export from ``path`` (a file, or a run folder)."""
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


def load_source(path: str | os.PathLike) -> Source:
    """Load the network of a run folder or file, with its best weights when there are any.

    The training summary comes from the run's ``checkpoint.npz`` (or the file itself).
    """
    from ..checkpoint import model_from_meta, read_npz, restore_params
    from ..engine.net import Net

    path = Path(path)
    file = find_file(path)
    meta, arrays = read_npz(file, "checkpoint")
    model = model_from_meta(meta, str(file))
    net = Net(model, dtype="float32")
    prefix = "param/"
    best = {k for k in arrays if k.startswith("best/")}
    if best and {f"best/{k}" for k in net.params} <= best:
        prefix = "best/"
    restore_params(net.params, arrays, str(file), prefix=prefix)
    summary_meta = meta
    ckpt = path / "checkpoint.npz"
    if path.is_dir() and file != ckpt and ckpt.is_file():
        try:
            summary_meta = read_npz(ckpt, "checkpoint")[0]
        except CheckpointError:
            pass  # the summary is optional; the weights came from a good file
    best_weights = prefix == "best/" or file.name == "best.npz"
    return Source(net, file, training_summary(summary_meta, best_weights), path if path.is_dir() else None)


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
