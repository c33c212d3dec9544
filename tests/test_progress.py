"""The training display: fits 40 to 200 columns on a pseudo-terminal, lines elsewhere, time left, best epochs."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest

from dnnspec import ir, progress
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def blobs(n=480, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(scale=1.5, size=(n, 2))).astype(np.float32), y


def model(epochs=4):
    return ir.model_from_layers((2,), [("dense", {"units": 8}), ("relu", {}), ("dense", {"units": 3}),
                                       ("softmax", {})], optimizer="sgd", optimizer_options={"lr": 0.05},
                                train={"epochs": epochs, "batch": 16, "seed": 3, "validation": 0.25})


class Terminal:
    """A small terminal: text, \\r, \\n, ANSI sequences (ignored); records any write past the last column."""

    def __init__(self, cols: int):
        self.cols, self.rows, self.col, self.wrapped = cols, [[]], 0, []

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":  # CSI: ESC [ params final-byte
                j = i + 2
                while j < len(text) and not text[j].isalpha():
                    j += 1
                i = j + 1
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.rows.append([])
                self.col = 0
            else:
                if self.col >= self.cols:
                    self.wrapped.append("".join(self.rows[-1]))
                row = self.rows[-1]
                row.extend(" " * (self.col + 1 - len(row)))
                row[self.col] = ch
                self.col += 1
            i += 1

    def screen(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.rows]


def pty_pair(cols: int):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    return master, slave


def read_all(master: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            return
        if not data:
            return
        chunks.append(data)


@pytest.mark.parametrize("cols", [40, 60, 80, 200])
def test_bar_fits_the_terminal_width(cols, monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)  # redraw at every step: every state is drawn
    master, slave = pty_pair(cols)
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(master, chunks))
    reader.start()
    out = open(slave, "w", encoding="utf-8", closefd=True)
    try:
        x, y = blobs()
        h = fit(Net(model()), x, y, progress="auto", out=out, x_test=x[:90], y_test=y[:90])
    finally:
        out.close()
        reader.join(timeout=10)
        os.close(master)
    raw = b"".join(chunks).decode("utf-8")
    term = Terminal(cols)
    term.feed(raw)
    assert term.wrapped == []  # nothing ever reached past the last column
    draws = [d for d in raw.split("\r") if " left" in d]
    assert len(draws) >= 4 * 23  # the bar was drawn at each of the 4 x 23 steps
    assert all(d.startswith("epoch ") and len(d.rstrip("\n")) < cols for d in draws)
    if cols >= 60:
        assert any("\u2588" in d for d in draws)  # the bar itself, in unicode blocks
    screen = [ln for ln in term.screen() if ln.strip()]
    epochs = [ln for ln in screen if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/4", "2/4", "3/4", "4/4"]  # the bar left no line of its own
    best = [int(ln.split()[1].split("/")[0]) for ln in epochs if ln.endswith(progress.BEST_MARK)]
    assert best == improving_epochs(h)
    assert screen[-1] == progress.final_line(h, cols - 1)  # the final line, after the last epoch's
    long = f"best epoch {h.best_epoch} of 4, test accuracy {h.test['accuracy']:.4f}"
    short = f"best {h.best_epoch}/4, test acc {h.test['accuracy']:.4f}, "  # below 55 columns
    assert screen[-1].startswith(long if cols > 55 else short) and screen[-2] == epochs[-1]


def improving_epochs(h) -> list[int]:
    """Epochs whose validation loss is below every earlier one's: what "* best" must mark."""
    out, low = [], np.inf
    for r in h.rows:
        if r["val_loss"] < low:
            out.append(int(r["epoch"]))
            low = r["val_loss"]
    return out


def test_train_command_on_a_terminal_fits_60_columns(tmp_path):
    x, y = blobs(400)
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:100], y_test=y[:100])
    (tmp_path / "t.dnn").write_text("network t\ninput [2]\nclasses 3\nlayers {\n  dense 8\n  relu\n  dense 3\n"
                                    "  softmax\n}\ntrain epochs=3 batch=16 validation=0.2\n")
    master, slave = pty_pair(60)
    p = subprocess.Popen([sys.executable, "-m", "dnnspec", "train", "t.dnn", "--data", "b.npz", "--out", "r"],
                         cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(master, chunks))
    reader.start()
    try:
        assert p.wait(timeout=120) == 0
    finally:
        reader.join(timeout=10)
        os.close(master)
    term = Terminal(60)
    term.feed(b"".join(chunks).decode("utf-8"))
    screen = [ln for ln in term.screen() if ln.strip()]
    assert term.wrapped == [] and screen[0].startswith("training t on b")
    assert [ln.split()[1] for ln in screen[1:4]] == ["1/3", "2/3", "3/3"]
    assert screen[4].startswith("best epoch ") and "test accuracy" in screen[4] and len(screen) == 5


def test_lines_off_a_terminal_with_time_left_and_best_marks():
    buf = io.StringIO()
    x, y = blobs()
    h = fit(Net(model(5)), x, y, progress="auto", out=buf, x_test=x[:90], y_test=y[:90])
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and len(lines) == 6
    assert all(" left" in ln for ln in lines[:4]) and " left" not in lines[4]  # nothing left after the last
    best = [i + 1 for i, ln in enumerate(lines[:5]) if ln.endswith(progress.BEST_MARK)]
    assert best == improving_epochs(h)
    assert lines[5] == progress.final_line(h)


def test_time_left_is_for_the_whole_run(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    p = progress.Progress(io.StringIO())
    p.start(epochs=4, steps=10, done=1)  # resumed after epoch 1, at t = 100
    now[0] = 110.0  # 20 of 40 steps are done, 10 of them in this session: 10 s per 10 steps, 20 steps left
    assert p.left_s(20) == pytest.approx(20.0)
    assert p.left_s(10) == np.inf  # no step of this session yet: unknown


@pytest.mark.parametrize("width", [10, 25, 40, 60, 200])
def test_fit_drops_the_least_useful_pieces_first(width):
    parts = [("epoch 3/20", progress.KEEP), ("loss 0.1234", 5), ("lr 0.001", 1), ("acc 0.9000", 3),
             (progress.BEST_MARK, progress.KEEP)]
    text = progress.fit(parts, width)
    assert len(text) <= width
    kept = [t for t, _ in parts if t in text]
    if width >= len("epoch 3/20  * best"):
        assert kept[0] == "epoch 3/20" and kept[-1] == progress.BEST_MARK
        for t, prio in parts:  # a piece is there only if every more useful one is
            if t in kept:
                assert all(u in kept for u, q in parts if q > prio)


def test_final_line_variants():
    from dnnspec.engine.trainer import History

    h = History(rows=[{}] * 7, best_epoch=5, test={"loss": 0.3, "accuracy": 0.91}, seconds=415.2)
    assert progress.final_line(h) == "best epoch 5 of 7, test accuracy 0.9100 (loss 0.3000), 6 min 55 s in all"
    assert progress.final_line(h, 58) == "best epoch 5 of 7, test accuracy 0.9100, 6 min 55 s in all"
    assert progress.final_line(h, 40) == "best 5/7, test acc 0.9100, 6 min 55 s"
    assert progress.final_line(h, 20) == "best 5/7, test acc 0"  # no room even for that: cut
    reg = History(rows=[{}] * 3, best_epoch=3, test={"loss": 0.25, "mae": 0.4, "rmse": 0.5, "r2": 0.8}, seconds=2)
    assert progress.final_line(reg) == "best epoch 3 of 3, test loss 0.25 (RMSE 0.5), 2.0 s in all"
    assert progress.final_line(History(rows=[{}] * 2, best_epoch=1, seconds=12.4)) == "best epoch 1 of 2, 12 s in all"


def test_make_progress_modes():
    assert type(progress.make_progress("auto", io.StringIO())) is progress.Lines
    assert type(progress.make_progress(False, io.StringIO())) is progress.Progress
    assert type(progress.make_progress("bar", io.StringIO())) is progress.Bar
    with pytest.raises(UsageError, match="progress must be"):
        progress.make_progress("fancy", io.StringIO())
