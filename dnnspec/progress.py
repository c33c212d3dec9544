"""Training progress: a bar that fits the terminal, or one line per epoch in a log.

    progress = make_progress("auto", sys.stdout)   # "bar", "lines", "none" (or False)
    progress.start(epochs, steps, done=0)
    progress.step(e, i, loss, acc)                 # after batch i (1-based) of epoch e (0-based)
    progress.epoch_end(row, best=True)             # the epoch's line; "* best" marks a new best epoch
    progress.close(final_line(history))            # the bar goes, the final line stays last

On a terminal ("bar"): one tqdm bar for the whole run, redrawn at most every 0.1 s: the
epoch, the bar, the share of the run done, running loss and accuracy, the time left for the
whole run (elapsed time / steps done * steps left, validation passes included), batches per
second. The terminal's width is read at every redraw; the bar and every line are fitted to
it (one column spare, so nothing wraps): pieces are dropped from the least useful (batch/s)
to the most (the time left), never cut in the middle. Epoch lines scroll above the bar.
Elsewhere ("lines": a pipe, a log file): one line per epoch, with the time left for the run.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import Any, TextIO

from .errors import UsageError

REFRESH_S = 0.1
MAX_BAR = 40  # cells; a wider bar tells no more on a 200-column terminal
MIN_BAR = 10
KEEP = 99  # priority of pieces that are never dropped
BEST_MARK = "* best"


def make_progress(progress: str | bool | None, out: TextIO | None) -> Progress:
    """"auto" (a bar on a terminal, lines otherwise), "bar", "lines", or False/None/"none"."""
    out = out or sys.stdout
    if progress in (False, None, "none"):
        return Progress(out)
    if progress in (True, "auto"):
        progress = "bar" if _isatty(out) else "lines"
    if progress == "lines":
        return Lines(out)
    if progress != "bar":
        raise UsageError(f"progress must be 'auto', 'bar', 'lines' or 'none', found {progress!r}")
    try:
        return Bar(out)
    except ImportError:  # tqdm is a dependency; a broken install still trains, with lines
        return Lines(out)


def _isatty(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# --- fitting text to a width ----------------------------------------------------------------------


def fit(parts: list[tuple[str, int]], width: int | None, sep: str = "  ") -> str:
    """Join the pieces (text, priority) with ``sep``, dropping the lowest priorities until it fits ``width``.

    Pieces of priority KEEP stay; if they alone are too wide the text is cut at ``width``.
    """
    parts = [p for p in parts if p[0]]
    if width is not None:
        while len(sep.join(t for t, _ in parts)) > width:
            droppable = [p for p in parts if p[1] < KEEP]
            if not droppable:
                return sep.join(t for t, _ in parts)[:max(width, 0)]
            parts.remove(min(droppable, key=lambda p: p[1]))
    return sep.join(t for t, _ in parts)


def fmt_seconds(s: float) -> str:
    """3.2 s, 42 s, 6 min 55 s, 2 h 05 min: as people say durations."""
    if not math.isfinite(s):
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def epoch_parts(epoch: int, epochs: int, row: dict[str, Any], best: bool,
                left: float | None = None) -> list[tuple[str, int]]:
    """The pieces of an epoch's line with their priorities (higher stays longer); the best mark last."""
    parts = [(f"epoch {epoch}/{epochs}", KEEP), (f"loss {row['loss']:.4f}", 7)]
    if row.get("accuracy") is not None:
        parts.append((f"acc {row['accuracy']:.4f}", 4))
    if row.get("val_loss") is not None:
        parts.append((f"val_loss {row['val_loss']:.4f}", 6))
    if row.get("val_accuracy") is not None:
        parts.append((f"val_acc {row['val_accuracy']:.4f}", 8))
    parts += [(f"lr {row['lr']:.3g}", 2), (f"{row['seconds']:.1f}s", 3)]
    if left is not None:
        parts.append((f"{fmt_seconds(left)} left", 5))
    if best:
        parts.append((BEST_MARK, KEEP))
    return parts


def final_line(history: Any, width: int | None = None) -> str:
    """"best epoch 7 of 20, test accuracy 0.8955 (loss 0.3012), 33.1 s in all", fitted to ``width``.

    Too narrow for that even without the bracket: "best 7/20, test acc 0.8955, 33.1 s".
    """
    for short in (False, True):
        parts = _final_parts(history, short)
        while width is not None and len(_sentence(parts)) > width and any(p < KEEP for _, p in parts):
            parts.remove(min((q for q in parts if q[1] < KEEP), key=lambda q: q[1]))
        text = _sentence(parts)
        if width is None or len(text) <= width:
            return text
    return text[:width]


def _final_parts(history: Any, short: bool) -> list[tuple[str, int]]:
    n, best = len(history), history.best_epoch
    if best:
        head = f"best {best}/{n}" if short else f"best epoch {best} of {n}"
    else:
        head = f"{n} epochs"
    parts = [(head, KEEP)]
    test = history.test or {}
    if test.get("accuracy") is not None:
        parts += [(f"test {'acc' if short else 'accuracy'} {test['accuracy']:.4f}", KEEP),
                  (f"(loss {test['loss']:.4f})", 1)]
    elif test:
        parts.append((f"test loss {test['loss']:.4g}", KEEP))
        if test.get("rmse") is not None:
            parts.append((f"(RMSE {test['rmse']:.4g})", 1))
    if getattr(history, "seconds", None) is not None:
        parts.append((fmt_seconds(history.seconds) + ("" if short else " in all"), KEEP))
    return parts


def _sentence(parts: list[tuple[str, int]]) -> str:
    """Pieces joined with commas, a bracketed piece with a space: "a, b (c), d"."""
    out = ""
    for t, _ in parts:
        out += ((" " if t.startswith("(") else ", ") + t) if out else t
    return out


# --- the three modes ------------------------------------------------------------------------------


class Progress:
    """Silent progress; the base of Lines and Bar (which keep time for the whole run)."""

    width: int | None = None

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.epochs = self.steps = self.done = 0
        self.t0 = time.perf_counter()

    def start(self, epochs: int, steps: int, done: int = 0) -> None:
        """A run of ``epochs`` epochs of ``steps`` batches, ``done`` of them already trained (resume)."""
        self.epochs, self.steps, self.done = epochs, steps, done
        self.t0 = time.perf_counter()

    def left_s(self, steps_done: int) -> float:
        """Seconds left for the whole run: elapsed / steps done in this session * steps left."""
        ran = steps_done - self.done * self.steps
        if ran <= 0:
            return math.inf
        return (time.perf_counter() - self.t0) / ran * (self.epochs * self.steps - steps_done)

    def step(self, e: int, i: int, loss: float, acc: float | None) -> None:
        pass

    def epoch_end(self, row: dict[str, Any], best: bool = False) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def close(self, text: str | None = None) -> None:
        pass


class Lines(Progress):
    """One line per epoch (and notes), for pipes and log files."""

    def epoch_end(self, row: dict[str, Any], best: bool = False) -> None:
        epoch = int(row["epoch"])
        left = self.left_s(epoch * self.steps) if epoch < self.epochs else None
        self.line(fit(epoch_parts(epoch, self.epochs, row, best, left), None))

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def close(self, text: str | None = None) -> None:
        if text:
            self.line(text)


@functools.cache
def _tqdm_class() -> type:
    """tqdm without its monitor thread (we redraw ourselves); imported here: `dnnspec check` never loads it."""
    from tqdm import tqdm

    return type("DnnspecBar", (tqdm,), {"monitor_interval": 0})


class Bar(Lines):
    """A tqdm bar for the whole run, fitted to the terminal's width at every redraw."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        self._tqdm = _tqdm_class()
        self.bar: Any = None
        self._last = -math.inf

    @property
    def width(self) -> int | None:  # type: ignore[override]
        """Columns usable without wrapping: the terminal's width less one (re-read every time)."""
        try:
            return max(os.get_terminal_size(self.out.fileno()).columns - 1, 1)
        except (AttributeError, ValueError, OSError):
            return 79

    def start(self, epochs: int, steps: int, done: int = 0) -> None:
        super().start(epochs, steps, done)
        self.bar = self._tqdm(total=epochs * steps, initial=done * steps, file=self.out, leave=False,
                              dynamic_ncols=False, mininterval=math.inf, maxinterval=math.inf,
                              bar_format=self._format(done, 0, None, None, done * steps)[0], ncols=self.width)

    def _format(self, e: int, i: int, loss: float | None, acc: float | None, n: int) -> tuple[str, int]:
        """(tqdm bar_format with one ``{bar}``, ncols) for this width: pieces dropped by priority."""
        width = self.width
        total = max(self.epochs * self.steps, 1)
        left = self.left_s(n)
        rate = (n - self.done * self.steps) / max(time.perf_counter() - self.t0, 1e-9)
        parts = [(f"epoch {min(e + 1, self.epochs)}/{self.epochs}", KEEP), ("{bar}", 50),
                 (f"{100 * n / total:3.0f}%", 3),
                 (f"loss {loss:.4f}" if loss is not None else "", 6), (f"acc {acc:.3f}" if acc is not None else "", 5),
                 (f"{self._tqdm.format_interval(left) if math.isfinite(left) else '?'} left", KEEP),
                 (f"{rate:.0f} batch/s" if n > self.done * self.steps else "", 1)]
        text = fit(parts, width - MIN_BAR + len("{bar}"), sep=" ")  # the placeholder stands for >= MIN_BAR cells
        if "{bar}" not in text:  # too narrow for the bar: the numbers matter more
            return fit([p for p in parts if p[0] != "{bar}"], width, sep=" "), width
        fixed = len(text) - len("{bar}")
        return text, min(width, fixed + MAX_BAR)

    def step(self, e: int, i: int, loss: float, acc: float | None) -> None:
        now = time.perf_counter()
        if now - self._last < REFRESH_S and i < self.steps:
            return
        self._last = now
        n = e * self.steps + i
        self.bar.n = n
        self.bar.bar_format, self.bar.ncols = self._format(e, i, loss, acc, n)
        self.bar.refresh()

    def epoch_end(self, row: dict[str, Any], best: bool = False) -> None:
        self.line(fit(epoch_parts(int(row["epoch"]), self.epochs, row, best), self.width))

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        super().line(text)
        self._last = -math.inf  # redraw the bar at the next step

    def close(self, text: str | None = None) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: the bar's line is cleared
            self.bar = None
        if text:
            super().line(text)


__all__ = ["Bar", "Lines", "Progress", "epoch_parts", "final_line", "fit", "fmt_seconds", "make_progress"]
