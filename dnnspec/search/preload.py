"""Imported by the search's fork server only (the last of workers.PRELOAD): warm, and quick to end.

* matplotlib made ready to draw curves: a process's first plot loads the font list and the
  font and imports the Agg renderer and the PNG writer, ~0.45 s of a 16-run curves.png
  that takes 0.82 s first and 0.37 s after. Done here once, on a two-epoch run drawn into
  memory, the search's final curves.png (drawn by a child of the server, at the end, when
  nothing else runs) starts warm; trials draw nothing (``--no-plots``). Without matplotlib
  (the ``plot`` extra) nothing is drawn.
* The server ends without tearing down its modules (os._exit once its parent has gone): the
  teardown of NumPy, numba and matplotlib took ~0.2 s, during which the server still held
  the command's stdout and stderr, so a caller reading them (a script, a CI log) waited.
  Only in the server: the check walks the stack for multiprocessing.forkserver.main.
"""

from __future__ import annotations

import atexit
import io
import os
import sys

from .. import plots


def _draw() -> None:
    if not plots._have_matplotlib():
        return
    rows = [{"epoch": "1", "loss": "1.0", "accuracy": "0.5", "val_loss": "1.1", "val_accuracy": "0.4", "lr": "0.1"},
            {"epoch": "2", "loss": "0.5", "accuracy": "0.7", "val_loss": "0.6", "val_accuracy": "0.6", "lr": "0.1"}]
    fig = plots.curves_figure([("warm", plots._series(rows))], single=True, best_epoch=2, test={"accuracy": 0.6})
    fig.savefig(io.BytesIO(), format="png")


def in_fork_server() -> bool:
    """Whether this import runs inside multiprocessing's fork server (its preload)."""
    f = sys._getframe()
    while f is not None:
        if f.f_code.co_name == "main" and f.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        f = f.f_back
    return False


def _end_now() -> None:
    """Registered last, so run first at exit: flush and leave, skipping the other handlers and the teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_draw()
if in_fork_server():
    atexit.register(_end_now)
