"""``dnnspec check SPEC --graph FILE.svg|.png``: the network drawn as boxes and arrows, like Keras's plot_model.

One box per layer (and one for the input) with its name, kind and output shape; an arrow
from each input to the layer that reads it. Drawn with matplotlib (the ``plot`` extra,
imported only here), not graphviz: ``pip install 'dnnspec[plot]'`` is all it takes,
whereas graphviz's ``dot`` is a system program pip cannot install. The layout
(:func:`layout`) is simple because spec graphs are: a layer sits one row below its lowest
input (its longest path from the input), and continues its input's column when it is
that input's first reader; a branch (a shortcut, an inception arm) opens the next free
column. An arrow that skips rows in its own column (a residual block's identity) bends
to the side, past the boxes between.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UsageError
from .ir import INPUT, Model

FORMATS = (".svg", ".png")
BOX_W, BOX_H, COL_W, ROW_H = 2.3, 0.52, 2.7, 0.8  # inches
MAX_PIXELS = 30_000  # matplotlib (Agg) refuses images over 2**16 pixels a side; stay well below


def layout(model: Model) -> dict[str, tuple[int, int]]:
    """Name -> (column, row) of every box: ``input`` at (0, 0), each layer one row below its lowest input."""
    pos: dict[str, tuple[int, int]] = {INPUT: (0, 0)}
    taken = {(0, 0)}
    continued: set[str] = set()  # outputs whose column a reader already continues
    for layer in model.layers:
        row = 1 + max(pos[name][1] for name in layer.inputs)
        first = layer.inputs[0]
        col = pos[first][0]
        if first in continued or (col, row) in taken:
            col = next(c for c in range(1 + max(c for c, _ in taken) + 1) if (c, row) not in taken)
        continued.add(first)
        pos[layer.name] = (col, row)
        taken.add((col, row))
    return pos


def draw(model: Model, path: str | Path) -> Path:
    """Write the drawing of ``model`` to ``path`` (.svg or .png); UsageError for another suffix, no
    matplotlib, or a file that cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--graph {path}: write a .svg or .png file")
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    except ImportError:
        raise UsageError("--graph needs matplotlib; install it with: pip install 'dnnspec[plot]'") from None
    pos = layout(model)
    cols = 1 + max(c for c, _ in pos.values())
    rows = 1 + max(r for _, r in pos.values())
    width, height = cols * COL_W + 0.4, rows * ROW_H + 0.4
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")

    def centre(name: str) -> tuple[float, float]:
        c, r = pos[name]
        return 0.2 + (c + 0.5) * COL_W, height - 0.2 - (r + 0.5) * ROW_H

    labels = {INPUT: (f"input · {model.input.kind}", model.input.shape)}
    labels.update({layer.name: (f"{layer.name} · {layer.kind}", layer.out_shape) for layer in model.layers})
    for name, (title, shape) in labels.items():
        x, y = centre(name)
        ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0.02",
                                    facecolor="#eef3fb" if name != INPUT else "#f4f4f4", edgecolor="#35506b"))
        ax.text(x, y + 0.09, title, ha="center", va="center", fontsize=8, family="monospace")
        ax.text(x, y - 0.12, _shape(shape), ha="center", va="center", fontsize=7.5, color="#35506b")
    for layer in model.layers:
        for name in dict.fromkeys(layer.inputs):
            ax.add_patch(_arrow(FancyArrowPatch, pos[name], pos[layer.name], centre(name), centre(layer.name)))
    dpi = min(100, int(MAX_PIXELS / max(width, height)))
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise UsageError(f"--graph {path}: cannot write: {e.strerror or e}") from None
    return path


def _arrow(cls: type, a: tuple[int, int], b: tuple[int, int], pa: tuple[float, float],
           pb: tuple[float, float]) -> object:
    """An arrow from box a's bottom to box b's top; one that skips rows in its column runs from side to
    side, bulging into the gap between the columns (an arc3 curve reaches half its control point's offset)."""
    if a[0] == b[0] and b[1] - a[1] > 1:
        start, end = (pa[0] + BOX_W / 2, pa[1]), (pb[0] + BOX_W / 2, pb[1])
        rad = -2 * 0.4 * (COL_W - BOX_W) / math.dist(start, end)  # negative: to the right, going down
    else:
        start, end, rad = (pa[0], pa[1] - BOX_H / 2), (pb[0], pb[1] + BOX_H / 2), 0.0
    return cls(start, end, arrowstyle="-|>", mutation_scale=9, color="#35506b", linewidth=0.9,
               connectionstyle=f"arc3,rad={rad:.4f}", shrinkA=0, shrinkB=1)


def _shape(s: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in s) + (",)" if len(s) == 1 else ")")


__all__ = ["draw", "layout"]
