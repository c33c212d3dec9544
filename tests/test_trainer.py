"""The trainer: learning, determinism, resume equivalence, early stopping, divergence, files, batches."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import CheckpointError, DivergenceError, UsageError


def blobs(n=600, seed=0):
    """Three Gaussian blobs in 2-D: an independent, easy classification set."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(size=(n, 2))).astype(np.float32)
    return x, y


def model(optimizer="adam", opts=None, train=None, layers=None):
    layers = layers or [("dense", {"units": 16}), ("relu", {}), ("dense", {"units": 3}), ("softmax", {})]
    return ir.model_from_layers((2,), layers, optimizer=optimizer, optimizer_options=opts or {"lr": 0.01},
                                train={"epochs": 5, "batch": 32, "seed": 3, **(train or {})})


def weights(net):
    return {k: v.copy() for k, v in net.params.items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_learns_blobs_and_reports_metrics():
    x, y = blobs()
    net = Net(model())
    h = fit(net, x, y, epochs=8, progress=False)
    assert len(h) == 8 and h["epoch"] == list(range(1, 9))
    assert h["loss"][-1] < h["loss"][0]
    assert h["val_accuracy"][-1] > 0.9
    # the recorded validation numbers equal an independent evaluation of the held-out rows
    pred = net.forward(x).argmax(1)
    assert (pred == y).mean() > 0.9


def test_validation_split_sizes_and_explicit_validation():
    x, y = blobs(200)
    net = Net(model())
    seen = []
    inner = net.loss_and_grads

    def spy(xb, yb, rng=None):
        seen.append(len(xb))
        return inner(xb, yb, rng)

    net.loss_and_grads = spy
    fit(net, x, y, epochs=1, batch=32, validation=0.25, progress=False)
    assert sum(seen) == 150 and max(seen) == 32 and seen[-1] == 150 - 4 * 32
    seen.clear()
    h = fit(net, x, y, x_val=x[:10], y_val=y[:10], epochs=1, batch=50, progress=False)
    assert sum(seen) == 200 and h["val_loss"][0] is not None


def test_bit_identical_with_same_seed_and_different_with_other_seed():
    x, y = blobs()
    runs = []
    for seed in (3, 3, 4):
        net = Net(model(train={"seed": seed}))
        fit(net, x, y, epochs=3, progress=False)
        runs.append(weights(net))
    assert same(runs[0], runs[1])
    assert not same(runs[0], runs[2])


@pytest.mark.parametrize("schedule_epochs", [4])
def test_resume_equals_uninterrupted(tmp_path, schedule_epochs):
    x, y = blobs(300)
    layers = [("dense", {"units": 8}), ("batchnorm", {}), ("relu", {}), ("dropout", {"rate": 0.2}),
              ("dense", {"units": 3}), ("softmax", {})]
    full = Net(model(layers=layers))
    fit(full, x, y, epochs=schedule_epochs, run_dir=tmp_path / "a", progress=False)

    part = Net(model(layers=layers))
    fit(part, x, y, epochs=2, run_dir=tmp_path / "b", progress=False)
    fresh = Net(model(layers=layers, train={"seed": 99}))  # resume must not depend on the new net's init
    h = fit(fresh, x, y, epochs=schedule_epochs, run_dir=tmp_path / "b", resume=True, progress=False)
    assert len(h) == schedule_epochs
    assert same(weights(full), weights(fresh))


def test_interrupted_run_resumes_identically(tmp_path):
    x, y = blobs(300)
    full = Net(model())
    fit(full, x, y, epochs=4, run_dir=tmp_path / "a", progress=False)

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(Net(model()), x, y, epochs=4, run_dir=tmp_path / "b", progress=False, on_epoch=stop)
    resumed = Net(model())
    fit(resumed, x, y, epochs=4, run_dir=tmp_path / "b", resume=True, progress=False)
    assert same(weights(full), weights(resumed))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    x, y = blobs(100)
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        fit(Net(model()), x, y, run_dir=tmp_path, resume=True, progress=False)


def test_resume_with_other_spec_names_the_parameter(tmp_path):
    x, y = blobs(100)
    fit(Net(model()), x, y, epochs=1, run_dir=tmp_path, progress=False)
    other = model(layers=[("dense", {"units": 12}), ("relu", {}), ("dense", {"units": 3}), ("softmax", {})])
    with pytest.raises(CheckpointError, match=r"dense1\.kernel.*\(2, 12\).*\(2, 16\)"):
        fit(Net(other), x, y, epochs=2, run_dir=tmp_path, resume=True, progress=False)


def test_early_stopping_restores_best_weights():
    x, y = blobs(300)
    net = Net(model(opts={"lr": 0.05}))
    snapshots = {}
    h = fit(net, x, y, epochs=60, early_stop=2, progress=False,
            on_epoch=lambda e, row: snapshots.__setitem__(e, weights(net)))
    assert h.stopped_early and len(h) < 60
    vals = h["val_loss"]
    best = int(np.argmin(vals)) + 1
    assert h.best_epoch == best
    assert all(v >= vals[best - 1] for v in vals[best:]) and len(vals) - best == 2
    assert same(weights(net), snapshots[best])


def test_divergence_names_epoch_step_and_layer(tmp_path):
    x, y = blobs(200)
    x = x * 1e3
    net = Net(model(optimizer="sgd", opts={"lr": 1e6}))
    with pytest.raises(DivergenceError) as err:
        fit(net, x, y, epochs=3, run_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "epoch 1, step" in msg and "learning rate" in msg
    assert "dense" in msg


def test_divergence_keeps_last_finite_checkpoint(tmp_path):
    x, y = blobs(200)
    net = Net(model(optimizer="sgd", opts={"lr": 0.1}))
    fit(net, x, y, epochs=1, run_dir=tmp_path, progress=False)
    before = np.load(tmp_path / "checkpoint.npz")["param/dense1.kernel"].copy()
    bad = y.copy()
    xb = x.copy()
    xb[5, 0] = np.inf
    with pytest.raises(DivergenceError, match=r"epoch 2, step \d+.*dense1.*last finite checkpoint"):
        fit(net, xb, bad, epochs=2, run_dir=tmp_path, resume=True, progress=False)
    after = np.load(tmp_path / "checkpoint.npz")["param/dense1.kernel"]
    assert np.array_equal(before, after) and np.all(np.isfinite(after))


def test_run_folder_files(tmp_path):
    x, y = blobs(200)
    net = Net(model())
    fit(net, x, y, epochs=3, run_dir=tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"checkpoint.npz", "best.npz", "history.csv"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["epoch", "lr", "loss"] and len(lines) == 4


def test_checkpoint_every(tmp_path):
    x, y = blobs(200)
    epochs_seen = []
    net = Net(model(train={"checkpoint_every": 2}))

    def look(epoch, row):
        p = tmp_path / "checkpoint.npz"
        if p.exists():
            import json
            epochs_seen.append(json.loads(np.load(p)["meta"].tobytes())["epoch"])

    fit(net, x, y, epochs=5, run_dir=tmp_path, progress=False, on_epoch=look)
    assert epochs_seen == [2, 2, 4, 4]


def test_progress_lines_and_test_accuracy():
    x, y = blobs(200)
    buf = io.StringIO()
    h = fit(Net(model()), x, y, epochs=2, progress="auto", out=buf, x_test=x[:50], y_test=y[:50])
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()  # StringIO is not a terminal: plain lines
    assert [ln.split()[1] for ln in lines[:2]] == ["1/2", "2/2"] and all("val_acc" in ln for ln in lines[:2])
    assert len(lines) == 3 and lines[2].startswith(f"best epoch {h.best_epoch} of 2, test accuracy ")
    assert 0.0 <= h.test["accuracy"] <= 1.0
    bar = io.StringIO()  # a bar forced onto a stream that is not a terminal: 80 columns are assumed
    fit(Net(model()), x, y, epochs=1, progress="bar", out=bar)
    assert "batch/s" in bar.getvalue() and " left" in bar.getvalue()


def test_batches_are_gathered_by_index_not_copied():
    # uint8 images reach the net as uint8 batches (the net casts each batch), never a float copy of the set
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(256, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 2, 256)
    m = ir.model_from_layers((1, 4, 4), [("flatten", {}), ("dense", {"units": 2}), ("softmax", {})],
                             train={"batch": 64}, scale=1 / 255)
    net = Net(m)
    got = []
    inner = net.loss_and_grads
    net.loss_and_grads = lambda xb, yb, rng=None: (got.append((xb.dtype, xb.shape, xb.copy(), yb.copy())),
                                                   inner(xb, yb, rng))[1]
    fit(net, x, y, epochs=1, validation=0.0, progress=False)
    assert all(d == np.uint8 and s[0] == 64 for d, s, _, _ in got)
    xs = np.concatenate([g[2] for g in got])
    ys = np.concatenate([g[3] for g in got])
    # each example exactly once, labels travel with their images
    order = np.lexsort(xs.reshape(256, -1).T)
    ref = np.lexsort(x.reshape(256, -1).T)
    assert np.array_equal(xs[order], x[ref]) and np.array_equal(ys[order], y[ref])


def test_unknown_override_is_a_usage_error():
    x, y = blobs(100)
    with pytest.raises(UsageError, match="unknown option 'epoch'"):
        fit(Net(model()), x, y, epoch=3, progress=False)


def test_lr_override_and_schedule_reach_the_optimizer():
    x, y = blobs(100)
    h = fit(Net(model()), x, y, epochs=1, lr=0.123, progress=False)
    assert h["lr"] == [0.123]


# --- runs are never silently lost ---------------------------------------------------------


def run_files(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_training_over_an_earlier_run_is_refused_and_leaves_it_whole(tmp_path):
    x, y = blobs(200)
    fit(Net(model()), x, y, epochs=3, run_dir=tmp_path, progress=False)
    before = run_files(tmp_path)
    with pytest.raises(UsageError) as err:
        fit(Net(model()), x, y, epochs=2, run_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "3 of 3 epochs in checkpoint.npz" in msg and "\n" not in msg
    assert "--resume" in msg and "--overwrite" in msg
    assert run_files(tmp_path) == before


@pytest.mark.parametrize("present,expect", [
    ({"history.csv": "epoch,lr,loss\n1,0.1,2\n2,0.1,1\n"}, "2 epochs in history.csv, no checkpoint"),
    ({"best.npz": "x"}, "best weights in best.npz, no checkpoint"),
    ({"checkpoint.npz": "not a zip"}, "an unreadable checkpoint.npz"),
])
def test_any_trace_of_a_run_counts_as_one(tmp_path, present, expect):
    for name, text in present.items():
        (tmp_path / name).write_text(text)
    x, y = blobs(100)
    with pytest.raises(UsageError, match=expect):
        fit(Net(model()), x, y, epochs=1, run_dir=tmp_path, progress=False)


def test_a_folder_with_no_run_in_it_is_trained_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "spec.dnn").write_text("left by a run killed before its first checkpoint")
    x, y = blobs(100)
    fit(Net(model()), x, y, epochs=1, run_dir=tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "checkpoint.npz").exists()


def test_overwrite_deletes_the_whole_old_run_before_the_new_one_writes(tmp_path):
    x, y = blobs(200)
    fit(Net(model()), x, y, epochs=3, run_dir=tmp_path, progress=False)
    (tmp_path / "model.onnx").write_bytes(b"the old run's export")
    (tmp_path / "notes.txt").write_text("not the run's")

    def stop(epoch, row):
        raise KeyboardInterrupt

    # checkpoint_every=0: the new run is stopped before it writes any checkpoint or history
    with pytest.raises(KeyboardInterrupt):
        fit(Net(model()), x, y, epochs=2, run_dir=tmp_path, progress=False, overwrite=True,
            checkpoint_every=0, on_epoch=stop)
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & {"checkpoint.npz", "history.csv", "model.onnx", "curves.png"}
    assert "notes.txt" in names
    h = fit(Net(model()), x, y, epochs=2, run_dir=tmp_path, progress=False, overwrite=True)
    assert len(h) == 2 and len((tmp_path / "history.csv").read_text().splitlines()) == 3


def test_resume_and_overwrite_together_and_a_file_as_run_dir_are_usage_errors(tmp_path):
    x, y = blobs(100)
    with pytest.raises(UsageError, match="give one of them"):
        fit(Net(model()), x, y, run_dir=tmp_path, resume=True, overwrite=True, progress=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a run folder"):
        fit(Net(model()), x, y, run_dir=tmp_path / "f", progress=False)


def test_resume_repairs_a_short_history_even_with_nothing_to_do(tmp_path):
    """The state a kill between checkpoint.npz and history.csv leaves: the csv one epoch short."""
    x, y = blobs(200)
    fit(Net(model()), x, y, epochs=3, run_dir=tmp_path, progress=False)
    full = (tmp_path / "history.csv").read_text()
    (tmp_path / "history.csv").write_text("".join(full.splitlines(keepends=True)[:3]))  # header + 2 epochs
    buf = io.StringIO()
    fit(Net(model()), x, y, epochs=3, run_dir=tmp_path, resume=True, progress="lines", out=buf)
    assert "nothing to do: 3 of 3 epochs" in buf.getvalue()
    assert (tmp_path / "history.csv").read_text() == full


def test_resume_says_where_it_goes_on_and_clears_stale_temporaries(tmp_path):
    x, y = blobs(200)
    fit(Net(model()), x, y, epochs=2, run_dir=tmp_path, progress=False)
    stale = [tmp_path / ".checkpoint.npz.x1y2z3w4.tmp", tmp_path / ".best.npz.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    buf = io.StringIO()
    fit(Net(model()), x, y, epochs=4, run_dir=tmp_path, resume=True, progress="lines", out=buf)
    first = buf.getvalue().splitlines()[0]
    assert first == f"resuming at epoch 3 of 4: {tmp_path / 'checkpoint.npz'} holds 2 epochs"
    assert not any(p.exists() for p in stale)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_test_report_files_belong_to_the_run(tmp_path):
    """metrics.json and confusion.png are the run's: an overwrite without test data leaves none of the old ones."""
    import json

    x, y = blobs(300)
    h = fit(Net(model()), x, y, epochs=2, run_dir=tmp_path, progress=False, x_test=x[:60], y_test=y[:60])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == h.test["accuracy"] == h.report["accuracy"]
    assert sum(map(sum, saved["confusion_matrix"]["counts"])) == 60
    assert (tmp_path / "confusion.png").exists()
    fit(Net(model()), x, y, epochs=1, run_dir=tmp_path, progress=False, overwrite=True)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "confusion.png").exists()


def test_regression_test_report_and_final_line(tmp_path):
    import json

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    t = (x @ np.array([[1.0], [-1.0], [0.5]])).astype(np.float32)
    m = ir.model_from_layers((3,), [("dense", {"units": 8}), ("tanh", {}), ("dense", {"units": 1})], loss="mse",
                             train={"epochs": 3, "batch": 20, "seed": 0, "validation": 0.2})
    net = Net(m)
    buf = io.StringIO()
    h = fit(net, x, t, run_dir=tmp_path, progress="lines", out=buf, x_test=x[:50], y_test=t[:50])
    out = net.forward(x[:50])
    rmse = float(np.sqrt(np.mean((out.astype(np.float64) - t[:50]) ** 2)))
    assert h.test["rmse"] == pytest.approx(rmse, rel=1e-6) and set(h.test) == {"loss", "mae", "rmse", "r2"}
    assert json.loads((tmp_path / "metrics.json").read_text())["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert not (tmp_path / "confusion.png").exists()  # no classes, no confusion matrix
    assert buf.getvalue().splitlines()[-1].startswith(f"best epoch {h.best_epoch} of 3, test loss ")
    assert f"(RMSE {rmse:.4g})" in buf.getvalue().splitlines()[-1]
