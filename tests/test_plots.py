"""Learning curves, augment grids and the ``plot`` / ``augment-preview`` commands."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from dnnspec import plots  # noqa: E402
from dnnspec.cli import main  # noqa: E402
from dnnspec.errors import DataError, UsageError  # noqa: E402

COLS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"]


def history(epochs=5, val=True, acc=True, offset=0.0):
    return [{"epoch": e, "train_loss": 2.0 / e + offset, "train_acc": (0.5 + 0.03 * e) if acc else "",
             "val_loss": (2.2 / e + offset) if val else "", "val_acc": (0.45 + 0.03 * e) if (val and acc) else "",
             "lr": 1e-3, "time": 0.5 * e} for e in range(1, epochs + 1)]


def write_history(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        w.writerows(rows)
    return run_dir


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size, len(np.unique(np.asarray(im.convert("L"))))


# --- curves ----------------------------------------------------------------------------


def test_write_curves_png_atomic_and_replaces(tmp_path):
    (tmp_path / "curves.png").write_bytes(b"old")
    path = plots.write_curves(tmp_path, history())
    assert path == tmp_path / "curves.png"
    fmt, (w, h), grey_levels = png_size(path)
    assert fmt == "PNG" and w > h > 200 and grey_levels > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temp file left behind


def test_curves_draw_exactly_the_history_values():
    rows = history(epochs=4)
    fig = plots.curves_figure([("run", plots._series(rows))], single=True)
    loss_ax, acc_ax = fig.axes[:2]  # then the learning rate's axis, twinned with the loss panel
    by_label = {line.get_label(): line for line in loss_ax.lines}
    np.testing.assert_allclose(by_label["train"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(by_label["train"].get_ydata(), [r["train_loss"] for r in rows])
    np.testing.assert_allclose(by_label["val"].get_ydata(), [r["val_loss"] for r in rows])
    assert by_label["val"].get_linestyle() == "--"
    acc = {line.get_label(): line for line in acc_ax.lines}
    np.testing.assert_allclose(acc["val"].get_ydata(), [r["val_acc"] for r in rows])


def test_trainer_column_names_are_understood(tmp_path):
    """The trainer's history.csv spells the columns loss, accuracy, val_accuracy, seconds."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,lr,loss,accuracy,val_loss,val_accuracy,seconds\n"
                                     "1,0.001,0.9,0.7,1.0,0.65,3.2\n2,0.001,0.5,0.8,0.6,0.78,3.1\n")
    s = plots._series(plots.read_history(run))
    np.testing.assert_allclose(s["train_loss"], [0.9, 0.5])
    np.testing.assert_allclose(s["train_acc"], [0.7, 0.8])
    np.testing.assert_allclose(s["val_acc"], [0.65, 0.78])
    np.testing.assert_allclose(s["time"], [3.2, 3.1])
    assert png_size(plots.plot_runs([run], tmp_path / "o.png"))[0] == "PNG"


def test_curves_without_validation_or_accuracy():
    fig = plots.curves_figure([("r", plots._series(history(val=False, acc=False)))], single=True)
    loss_ax, lr_ax = fig.axes  # one panel, and the learning rate on its right-hand axis
    assert [line.get_label() for line in loss_ax.lines] == ["train"]
    assert lr_ax.get_ylabel() == "learning rate" and lr_ax.get_shared_x_axes().joined(loss_ax, lr_ax)


def test_curves_mark_best_epoch_test_result_and_learning_rate():
    rows = history(epochs=6)
    for r in rows:
        r["lr"] = 0.1 / r["epoch"]  # a decaying rate, drawn as recorded
    fig = plots.curves_figure([("r", plots._series(rows))], single=True, best_epoch=4, test={"accuracy": 0.62})
    loss_ax, acc_ax, lr_ax = fig.axes
    lr_line = lr_ax.lines[0]
    np.testing.assert_allclose(lr_line.get_ydata(), [0.1 / e for e in range(1, 7)])
    for ax in (loss_ax, acc_ax):  # the best epoch: a vertical line at x = 4 on both panels
        assert any(list(ln.get_xdata()) == [4, 4] for ln in ax.lines)
    test = [ln for ln in acc_ax.lines if ln.get_label() == "test 0.6200"]
    assert len(test) == 1 and list(test[0].get_ydata()) == [0.62, 0.62]
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert "best epoch 4" in labels and "learning rate (right)" in labels


def test_curves_of_a_regression_run_mark_the_test_loss():
    fig = plots.curves_figure([("r", plots._series(history(acc=False)))], single=True, best_epoch=2,
                              test={"loss": 0.5})
    assert [ln.get_label() for ln in fig.axes[0].lines if list(ln.get_ydata()) == [0.5, 0.5]] == ["test 0.5"]


def test_confusion_png_has_class_names_and_counts(tmp_path):
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    names = ["cat", "dog", "a very long class name"]
    fig = plots.confusion_figure(counts, names, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(counts[i, j]) for i, j in zip(*np.nonzero(counts))}
    np.testing.assert_allclose(ax.images[0].get_array(), counts / counts.sum(1, keepdims=True))
    path = plots.write_confusion(tmp_path / "c.png", counts, names)
    fmt, (w, h), levels = png_size(path)
    assert fmt == "PNG" and w >= 400 and h >= 400 and levels > 10


def test_write_curves_quietly_none_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots.write_curves(tmp_path, history()) is None
    assert not (tmp_path / "curves.png").exists()
    with pytest.raises(UsageError, match="pip install 'dnnspec\\[plot\\]'"):
        plots.plot_runs([tmp_path], tmp_path / "x.png")


def test_plot_runs_overlays_runs_from_history_csv(tmp_path):
    a = write_history(tmp_path / "a", history(epochs=5))
    b = write_history(tmp_path / "b", history(epochs=3, val=False, offset=0.5))
    out = plots.plot_runs([a, b], tmp_path / "cmp.png")
    assert png_size(out)[0] == "PNG"
    fig = plots.curves_figure([("a", plots._series(plots.read_history(a))),
                               ("b", plots._series(plots.read_history(b)))], single=False)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["a train", "a val", "b train"]
    np.testing.assert_allclose(fig.axes[0].lines[2].get_ydata(), [2.0 / e + 0.5 for e in (1, 2, 3)])
    assert fig.axes[0].lines[0].get_color() == fig.axes[0].lines[1].get_color() != fig.axes[0].lines[2].get_color()


def test_plot_runs_errors(tmp_path):
    with pytest.raises(UsageError, match="no such run folder"):
        plots.plot_runs([tmp_path / "missing"], tmp_path / "o.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"not a run folder \(no history.csv\)"):
        plots.plot_runs([tmp_path / "empty"], tmp_path / "o.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "history.csv").write_text("")
    with pytest.raises(DataError, match="no epochs recorded"):
        plots.plot_runs([tmp_path / "bad"], tmp_path / "o.png")


def test_same_folder_names_get_longer_labels(tmp_path):
    a = write_history(tmp_path / "x" / "out", history())
    b = write_history(tmp_path / "y" / "out", history())
    assert plots._run_label(a, [a, b]) == "x/out" and plots._run_label(b, [a, b]) == "y/out"


# --- augment grid --------------------------------------------------------------------


def test_augment_grid_shows_originals_then_variants(tmp_path):
    rng = np.random.default_rng(0)
    orig = rng.uniform(0, 255, (3, 1, 6, 6)).astype(np.float32)
    var = rng.uniform(0, 255, (2, 3, 1, 6, 6)).astype(np.float32)
    fig = plots.augment_grid_figure(orig, var, (0.0, 255.0), ["a", "b", "c"])
    axes = np.array(fig.axes).reshape(3, 3)
    np.testing.assert_allclose(axes[1, 0].images[0].get_array(), orig[1, 0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(axes[2, 2].images[0].get_array(), var[1, 2, 0] / 255.0, rtol=1e-6)
    assert axes[0, 0].get_title() == "original" and axes[0, 2].get_title() == "augmented 2"
    assert axes[2, 0].get_ylabel() == "c"
    rgb = plots.augment_grid_figure(rng.uniform(0, 1, (1, 3, 4, 4)), rng.uniform(0, 1, (1, 1, 3, 4, 4)), (0, 1))
    assert rgb.axes[0].images[0].get_array().shape == (4, 4, 3)
    path = plots.write_augment_grid(tmp_path / "g.png", orig, var, (0.0, 255.0))
    assert png_size(path)[0] == "PNG"


# --- commands ----------------------------------------------------------------------------

SPEC = """network tiny
input image[1, 8, 8] scale=1/255
classes 3
augment {
  flip horizontal p=0.5
  translate 1px
  rotate 10deg
}
layers {
  flatten
  dense 3
  softmax
}
train batch=4
"""


@pytest.fixture
def image_data(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 20))
    return tmp_path / "d.npz"


def test_cli_plot(tmp_path, capsys):
    a = write_history(tmp_path / "a", history())
    b = write_history(tmp_path / "b", history(offset=0.3))
    assert main(["plot", str(a), str(b), "-o", str(tmp_path / "c.png")]) == 0
    assert png_size(tmp_path / "c.png")[0] == "PNG" and "2 runs" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_cli_augment_preview(tmp_path, image_data, capsys):
    pytest.importorskip("dnnspec.frontend")
    spec = tmp_path / "tiny.dnn"
    spec.write_text(SPEC)
    out = tmp_path / "grid.png"
    assert main(["augment-preview", str(spec), "--data", str(image_data), "-n", "3", "--variants", "4",
                 "-o", str(out), "--seed", "1"]) == 0
    assert "3 images x 4 variants (flip, translate, rotate)" in capsys.readouterr().out
    fmt, (w, h), _ = png_size(out)
    assert fmt == "PNG" and w > h  # 3 rows, 5 columns



def test_cli_augment_preview_mixes_the_picked_images(tmp_path, image_data, capsys, monkeypatch):
    """mixup/cutmix mix the picked images with each other, as a batch in training; each variant's lam is printed."""
    from dnnspec.commands import augment_preview

    grids = []
    monkeypatch.setattr("dnnspec.plots.write_augment_grid", lambda out, o, v, r, labels: grids.append((o, v)) or out)
    spec = tmp_path / "mix.dnn"
    spec.write_text(SPEC.replace("  translate 1px\n  rotate 10deg\n", "  mixup alpha=0.4\n"))
    assert augment_preview.run(augment_preview_args(spec, image_data)) == 0
    line = capsys.readouterr().out
    assert "(flip, mixup); lam of each variant: " in line
    lams = [float(v) for v in line.split("lam of each variant: ")[1].split(", ")]
    originals, variants = grids[0]
    assert len(lams) == len(variants) == 4 and all(0 < lam < 1 for lam in lams)
    both = np.concatenate([originals, originals[..., ::-1]]).astype(np.float32)  # each picked image, flipped or not
    for v, lam in zip(variants, lams):
        for r, image in enumerate(v):  # lam of its own image (flipped or not) + 1 - lam of a picked one
            own = both[[r, r + len(originals)]]
            err = np.abs(image - lam * own[:, None] - (1 - lam) * both[None, :]).max(axis=(2, 3, 4))
            assert err.min() <= 0.005 * 255 + 1e-3  # lam is printed to 2 decimals


def augment_preview_args(spec, data):
    import argparse

    return argparse.Namespace(spec=str(spec), data=str(data), data_dir=None, n=3, variants=4, out="unused.png",
                              seed=1)

def test_cli_augment_preview_errors(tmp_path, image_data, capsys):
    pytest.importorskip("dnnspec.frontend")
    plain = tmp_path / "plain.dnn"
    plain.write_text(SPEC.replace("augment {\n  flip horizontal p=0.5\n  translate 1px\n  rotate 10deg\n}\n", ""))
    assert main(["augment-preview", str(plain), "--data", str(image_data)]) == 2
    assert "has no augment block" in capsys.readouterr().err
    spec = tmp_path / "tiny.dnn"
    spec.write_text(SPEC)
    assert main(["augment-preview", str(spec), "--data", str(tmp_path / "missing.npz")]) == 1
    assert "missing.npz: data file not found" in capsys.readouterr().err
    assert main(["augment-preview", str(spec), "--data", str(image_data), "-n", "0"]) == 2


def test_plot_draws_the_checkpoints_history_when_history_csv_is_behind(tmp_path, capsys):
    """A run killed between checkpoint.npz and history.csv: the checkpoint's rows are the true history."""
    from dnnspec import ir
    from dnnspec.engine.net import Net
    from dnnspec.engine.trainer import fit

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 2)).astype(np.float32), rng.integers(0, 2, 120)
    m = ir.model_from_layers((2,), [("dense", {"units": 2}), ("softmax", {})], train={"batch": 32, "seed": 1})
    run = tmp_path / "run"
    h = fit(Net(m), x, y, epochs=3, run_dir=run, progress=False)
    lines = (run / "history.csv").read_text().splitlines(keepends=True)
    (run / "history.csv").write_text("".join(lines[:2]))  # one epoch of three
    rows = plots.read_history(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], h["loss"], rtol=1e-5)
    (run / "history.csv").unlink()  # killed before the first history.csv was written
    assert [r["epoch"] for r in plots.read_history(run)] == ["1", "2", "3"]
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    capsys.readouterr()


def test_plot_of_one_run_reads_its_best_epoch_and_test_result(tmp_path):
    from dnnspec import ir
    from dnnspec.engine.net import Net
    from dnnspec.engine.trainer import fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    m = ir.model_from_layers((2,), [("dense", {"units": 2}), ("softmax", {})],
                             train={"epochs": 3, "batch": 20, "seed": 0, "validation": 0.2})
    h = fit(Net(m), x, y, run_dir=tmp_path / "run", progress=False, x_test=x[:40], y_test=y[:40])
    marks = plots.read_marks(tmp_path / "run")
    assert marks["best_epoch"] == h.best_epoch and marks["test"] == h.test
    assert plots.read_marks(tmp_path) == {}  # not a run: no marks, no error


def test_curves_of_several_runs_share_one_legend_a_colour_per_run():
    """Several runs: one legend on the last panel (a colour per run, then the two line styles), none on the others."""
    runs = [(f"r{i}", plots._series(history(epochs=3))) for i in range(3)]
    fig = plots.curves_figure(runs, single=False)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_legend() is None
    legend = acc_ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["r0", "r1", "r2", "train", "val"]
    colours = [h.get_color() for h in legend.legend_handles]
    assert colours[:3] == ["C0", "C1", "C2"] and [h.get_linestyle() for h in legend.legend_handles[3:]] == ["-", "--"]
    assert {ln.get_color() for ln in loss_ax.lines if ln.get_label().startswith("r1 ")} == {"C1"}
