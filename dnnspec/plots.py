"""PNG figures: learning curves of runs and grids of augmented images.

matplotlib is an optional extra (``pip install 'dnnspec[plot]'``) and is imported only
inside these functions, with the Agg backend through ``matplotlib.figure.Figure`` (no
pyplot, no global state, no display needed). Files are written atomically: a temporary
file in the same folder, then ``os.replace``.

History rows are the trainer's: dicts with ``epoch, train_loss, train_acc, val_loss,
val_acc, lr, time`` (or the spellings in ``ALIASES``: ``loss``, ``accuracy``,
``val_accuracy``, ``seconds``); a missing or empty value (no validation split, a regression task)
is drawn as nothing.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, DnnspecError, UsageError

HISTORY = "history.csv"
CURVES = "curves.png"
COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time")
# Other spellings of the same columns (the trainer's history.csv writes loss, accuracy, ...).
ALIASES = {"train_loss": ("loss",), "train_acc": ("accuracy", "train_accuracy", "acc"),
           "val_acc": ("val_accuracy",), "time": ("seconds",)}


def write_curves(run_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], best_epoch: int | None = None,
                 test: Mapping[str, float] | None = None) -> Path | None:
    """Draw one run's loss and accuracy per epoch into ``run_dir/curves.png``.

    ``best_epoch`` is marked with a vertical line, the ``test`` metrics (accuracy, else loss)
    with a horizontal one. Returns the path, or None (quietly) when matplotlib is not
    installed or there are no rows.
    """
    if not rows or not _have_matplotlib():
        return None
    series = _series(rows)
    fig = curves_figure([(Path(run_dir).name or "run", series)], single=True, best_epoch=best_epoch, test=test)
    return _save(fig, Path(run_dir) / CURVES)


def plot_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Read each run's ``history.csv`` and draw them all on one pair of axes (loss, accuracy).

    Raises UsageError for a folder without history.csv or when matplotlib is missing,
    DataError for a history.csv that cannot be read.
    """
    if not _have_matplotlib():
        raise UsageError("plotting needs matplotlib; install it with: pip install 'dnnspec[plot]'")
    runs = [(_run_label(Path(d), run_dirs), _series(read_history(d))) for d in run_dirs]
    marks = read_marks(run_dirs[0]) if len(runs) == 1 else {}
    return _save(curves_figure(runs, single=len(runs) == 1, **marks), Path(out))


def read_marks(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The best epoch and test metrics a run recorded (checkpoint.npz, metrics.json), for the curves' marks."""
    import json

    from .checkpoint import read_meta
    from .history import CHECKPOINT

    run, marks = Path(run_dir), {}
    try:
        marks["best_epoch"] = read_meta(run / CHECKPOINT).get("best_epoch")
    except (DnnspecError, OSError, AttributeError):
        pass
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        marks["test"] = {k: float(metrics[k]) for k in ("loss", "accuracy") if k in metrics}
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return marks


def read_history(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``run_dir/history.csv`` as dicts of strings (columns as the row keys).

    The trainer writes ``checkpoint.npz`` (which holds the same rows) and then history.csv:
    a run killed between the two has a history.csv one save behind, or none. When the
    run's checkpoint holds more epochs, its rows are returned instead, as history.csv would hold them.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run_dir}: no such run folder; give folders written by 'dnnspec train --out'")
    saved = _checkpoint_rows(run)
    path = run / HISTORY
    if not path.is_file():
        if saved:
            return saved
        raise UsageError(f"{run_dir}: not a run folder (no {HISTORY}); train into it with 'dnnspec train --out'")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        if saved:
            return saved
        raise DataError(f"{path}: cannot read history ({e})") from None
    if saved and len(saved) > len(rows):
        return saved
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{path}: no epochs recorded (expected a header with epoch, loss, accuracy, val_loss, "
                        f"val_accuracy and a row per epoch)")
    return rows


def _checkpoint_rows(run: Path) -> list[dict[str, str]] | None:
    """The history rows inside ``run/checkpoint.npz`` formatted as in history.csv; None without a readable one."""
    from .checkpoint import read_meta
    from .history import CHECKPOINT, History

    if not (run / CHECKPOINT).is_file():
        return None
    try:
        text = History(list(read_meta(run / CHECKPOINT)["rows"])).to_csv()
    except (DnnspecError, KeyError, TypeError, ValueError, AttributeError):
        return None  # no usable checkpoint: history.csv is all there is
    return list(csv.DictReader(io.StringIO(text))) or None


def _series(rows: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Column name (``COLUMNS``, or one of its ``ALIASES``) -> float array (NaN where missing or empty)."""
    rows = list(rows)
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    out = {}
    for k in COLUMNS:
        src = next((a for a in (k, *ALIASES.get(k, ())) if a in keys), k)
        out[k] = np.array([_float(r.get(src)) for r in rows])
    return out


def _float(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _run_label(d: Path, all_dirs: Sequence[str | os.PathLike]) -> str:
    """The folder name, or its last two parts when names repeat (runs/a/out, runs/b/out)."""
    names = [Path(x).resolve().name for x in all_dirs]
    name = d.resolve().name
    return name if names.count(name) == 1 else "/".join(d.resolve().parts[-2:])


def curves_figure(runs: list[tuple[str, dict[str, np.ndarray]]], single: bool, best_epoch: int | None = None,
                  test: Mapping[str, float] | None = None):
    """Two panels (loss, accuracy; loss only when no run has accuracy); training solid,
    validation dashed; one colour per run. ``runs``: (label, column -> values per epoch).

    A single run also shows its learning rate (grey, right axis of the loss panel), the
    ``best_epoch`` (dotted vertical line) and the ``test`` accuracy (or loss) as a
    dash-dotted horizontal line.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    has_acc = any(np.isfinite(s["train_acc"]).any() or np.isfinite(s["val_acc"]).any() for _, s in runs)
    fig = Figure(figsize=(11 if has_acc else 6, 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    panels = [("loss", axes[0])] + ([("acc", axes[1])] if has_acc else [])
    for i, (label, s) in enumerate(runs):
        color = f"C{i % 10}"
        for key, ax in panels:
            for split, style in (("train", "-"), ("val", "--")):
                y = s[f"{split}_{key}"]
                if np.isfinite(y).any():
                    name = split if single else f"{label} {split}"  # the legend of several: _runs_legend
                    ax.plot(s["epoch"], y, style, color=color if not single else None, marker=".", label=name)
    for key, ax in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if key == "loss" else "accuracy")
        ax.set_title(("loss" if key == "loss" else "accuracy") + (f": {runs[0][0]}" if single else ""))
        ax.grid(True, alpha=0.3)
    if not single:
        _runs_legend(panels[-1][1], [label for label, _ in runs])
        return fig
    lr_ax = _mark_run(runs[0][1], dict(panels), best_epoch, test or {})
    for key, ax in panels:
        handles, labels = ax.get_legend_handles_labels()
        if key == "loss" and lr_ax is not None:  # one legend for the loss and the learning rate
            more = lr_ax.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize="small")
    return fig


def _runs_legend(ax: Any, labels: list[str]) -> None:
    """Several runs: one legend, on the last panel, with a colour per run and the two line styles once
    (a legend per panel with an entry per run and split listed each run twice on both panels, and
    drawing it took half of a 16-run plot's time)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i % 10}", marker=".") for i in range(len(labels))]
    handles += [Line2D([], [], color="0.4", linestyle="-"), Line2D([], [], color="0.4", linestyle="--")]
    ax.legend(handles, [*labels, "train", "val"], fontsize="small", ncols=1 + len(labels) // 12)


def _mark_run(s: dict[str, np.ndarray], panels: dict[str, Any], best_epoch: int | None,
              test: Mapping[str, float]) -> Any:
    """The learning rate on a right-hand axis of the loss panel (returned), the best epoch, the test result."""
    loss_ax, lr_ax = panels["loss"], None
    if np.isfinite(s["lr"]).any():
        lr_ax = loss_ax.twinx()
        lr_ax.plot(s["epoch"], s["lr"], "-", color="0.6", linewidth=1.2, label="learning rate (right)")
        lr_ax.set_ylabel("learning rate", color="0.35")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if best_epoch:
        for key, ax in panels.items():
            ax.axvline(best_epoch, color="0.2", linestyle=(0, (1, 2)), linewidth=1,
                       label=f"best epoch {best_epoch}" if key == "loss" else None)
    if test.get("accuracy") is not None and "acc" in panels:
        panels["acc"].axhline(test["accuracy"], color="C3", linestyle="-.", linewidth=1,
                              label=f"test {test['accuracy']:.4f}")
    elif test.get("loss") is not None:
        loss_ax.axhline(test["loss"], color="C3", linestyle="-.", linewidth=1, label=f"test {test['loss']:.4g}")
    return lr_ax


def write_confusion(path: str | os.PathLike, counts: np.ndarray, class_names: Sequence[str],
                    title: str = "") -> Path | None:
    """A confusion matrix as PNG (rows: true class, columns: predicted), with class names; None without matplotlib."""
    if not _have_matplotlib():
        return None
    return _save(confusion_figure(counts, class_names, title), Path(path))


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str = ""):
    """The matplotlib Figure of :func:`write_confusion`: colour = share of the true class (row), text = count."""
    from matplotlib.figure import Figure

    counts = np.asarray(counts)
    k = len(counts)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.55 * k + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(k)
    font = max(5.0, min(10.0, 220.0 / max(k, 1)))
    ax.set_xticks(ticks, [str(n) for n in class_names], rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center",
                  fontsize=font)
    ax.set_yticks(ticks, [str(n) for n in class_names], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if k <= 40:  # the counts stay readable up to about this size
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center", fontsize=font * 0.9,
                    color="white" if rows[i, j] > 0.5 else "black")
    return fig


def write_augment_grid(out: str | os.PathLike, originals: np.ndarray, variants: np.ndarray,
                       value_range: tuple[float, float], row_labels: Sequence[str] | None = None) -> Path:
    """A grid: one row per image, the original first, then its augmented variants.

    ``originals``: ``(n, C, H, W)``; ``variants``: ``(k, n, C, H, W)``; both in raw units,
    shown with ``value_range`` mapped to black..white (C = 1 in grey, C = 3 as RGB).
    """
    if not _have_matplotlib():
        raise UsageError("the preview needs matplotlib; install it with: pip install 'dnnspec[plot]'")
    return _save(augment_grid_figure(originals, variants, value_range, row_labels), Path(out))


def augment_grid_figure(originals: np.ndarray, variants: np.ndarray, value_range: tuple[float, float],
                        row_labels: Sequence[str] | None = None):
    """The matplotlib Figure of :func:`write_augment_grid` (axes ``[row][column]``)."""
    from matplotlib.figure import Figure

    n, k = len(originals), len(variants)
    fig = Figure(figsize=(1.3 * (k + 1) + 0.6, 1.3 * n + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(n, k + 1, squeeze=False)
    lo, hi = value_range
    for r in range(n):
        for c in range(k + 1):
            _show(axes[r, c], originals[r] if c == 0 else variants[c - 1, r], lo, hi)
            if r == 0:
                axes[r, c].set_title("original" if c == 0 else f"augmented {c}", fontsize=9)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    return fig


def _show(ax, img: np.ndarray, lo: float, hi: float) -> None:
    """Draw one ``(C, H, W)`` image; C = 1 grey, C = 3 RGB, else its first channel."""
    scaled = (np.asarray(img, np.float32) - lo) / max(hi - lo, 1e-12)
    if scaled.shape[0] == 3:
        ax.imshow(np.clip(scaled.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    else:
        ax.imshow(scaled[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (dnnspec.fileio), creating its folder."""
    from .fileio import atomic_write

    return atomic_write(path, lambda f: fig.savefig(f, format="png"), make_parents=True)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["CURVES", "HISTORY", "augment_grid_figure", "confusion_figure", "curves_figure", "plot_runs",
           "read_history", "read_marks", "write_augment_grid", "write_confusion", "write_curves"]
