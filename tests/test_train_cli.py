"""``dnnspec train``: run folder, resume, limits, overrides, clear errors (through cli.main)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnnspec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = """network tiny_blobs
input [2]
classes 3
layers {
  dense 16
  relu
  dense 3
  softmax
}
optimizer adam lr=0.02
train epochs=3 batch=32 validation=0.2 seed=1
"""


@pytest.fixture
def spec(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, 400)
    yt = rng.integers(0, 3, 100)
    np.savez(tmp_path / "blobs.npz", x=(centers[y] + rng.normal(size=(400, 2))).astype(np.float32), y=y,
             x_test=(centers[yt] + rng.normal(size=(100, 2))).astype(np.float32), y_test=yt)
    p = tmp_path / "tiny.dnn"
    p.write_text(SPEC)
    return p


def meta(path):
    return json.loads(np.load(path)["meta"].tobytes())


def test_train_writes_the_run_folder(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(out),
                 "--progress", "lines"]) == 0
    text = capsys.readouterr().out
    assert text.count("\nepoch ") == 3 and "test accuracy" in text
    assert {"checkpoint.npz", "best.npz", "history.csv", "spec.dnn"} <= {p.name for p in out.iterdir()}
    assert (out / "spec.dnn").read_text() == SPEC
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    acc = float(text.split("test accuracy ")[1].split()[0])
    assert acc > 0.85


def test_no_plots_writes_the_numbers_without_the_pngs(spec, tmp_path, capsys):
    """--no-plots: history.csv and metrics.json as usual, no curves.png or confusion.png (where matplotlib draws)."""
    pytest.importorskip("matplotlib")
    runs = {}
    for name, flags in (("plots", []), ("none", ["--no-plots"])):
        runs[name] = tmp_path / name
        assert main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(runs[name]),
                     "--progress", "none", *flags]) == 0
    files = {name: {p.name for p in run.iterdir()} for name, run in runs.items()}
    assert {"curves.png", "confusion.png"} <= files["plots"]
    assert files["none"] == files["plots"] - {"curves.png", "confusion.png"}
    assert (runs["none"] / "history.csv").read_text() != "" and (runs["none"] / "metrics.json").exists()
    assert json.loads((runs["none"] / "metrics.json").read_text())["accuracy"] == \
        json.loads((runs["plots"] / "metrics.json").read_text())["accuracy"]


def test_overrides_limit_and_resume(spec, tmp_path, capsys):
    out = tmp_path / "run"
    data = str(tmp_path / "blobs.npz")
    assert main(["train", str(spec), "--data", data, "--out", str(out), "--epochs", "2", "--batch", "16",
                 "--lr", "0.005", "--seed", "9", "--limit", "100", "--progress", "none"]) == 0
    m = meta(out / "checkpoint.npz")
    assert m["epoch"] == 2 and m["train"]["batch"] == 16 and m["rows"][0]["lr"] == 0.005
    assert int(np.load(out / "checkpoint.npz")["opt/t"]) == 2 * 5  # 100 rows, 80 train, batch 16
    assert main(["train", str(spec), "--data", data, "--out", str(out), "--epochs", "4", "--batch", "16",
                 "--lr", "0.005", "--limit", "100", "--resume", "--progress", "none"]) == 0
    assert meta(out / "checkpoint.npz")["epoch"] == 4
    capsys.readouterr()


def test_default_run_folder_is_runs_network_name(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec), "--data", "blobs.npz", "--epochs", "1", "--progress", "none"]) == 0
    assert (tmp_path / "runs" / "tiny_blobs" / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv,code,message", [
    (["--epochs", "0"], 2, "--epochs must be at least 1"),
    (["--lr", "-1"], 2, "--lr must be positive"),
    (["--resume"], 1, "no checkpoint to resume"),
])
def test_bad_arguments_are_one_line_errors(spec, tmp_path, capsys, argv, code, message):
    rc = main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err


def test_missing_spec_and_data(tmp_path, spec, capsys):
    assert main(["train", str(tmp_path / "none.dnn")]) == 2
    assert "none.dnn" in capsys.readouterr().err
    assert main(["train", str(spec), "--data", str(tmp_path / "nothing.npz")]) == 1
    assert "nothing.npz" in capsys.readouterr().err


def test_module_entry_point_runs(spec, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dnnspec", "train", str(spec), "--data", str(tmp_path / "blobs.npz"),
                        "--out", str(tmp_path / "r"), "--epochs", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout and "\r" not in r.stdout  # a pipe is not a terminal: plain lines


# --- runs are never silently lost -----------------------------------------------------------


def train(spec, tmp_path, out, *argv):
    return main(["train", str(spec), "--data", str(tmp_path / "blobs.npz"), "--out", str(out),
                 "--progress", "lines", *argv])


def test_training_over_an_earlier_run_is_refused(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(spec, tmp_path, out, "--epochs", "2") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert train(spec, tmp_path, out) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err == (f"dnnspec: error: {out}: already holds a run (tiny_blobs, 2 of 2 epochs in checkpoint.npz); "
                   f"add --resume (resume=True) to continue it or --overwrite (overwrite=True) to replace it")
    assert "training" not in cap.out  # refused before the data was loaded
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_replaces_the_run(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(spec, tmp_path, out, "--epochs", "3") == 0
    (out / "model.onnx").write_bytes(b"exported from the old run")
    assert train(spec, tmp_path, out, "--epochs", "1", "--overwrite") == 0
    assert meta(out / "checkpoint.npz")["epoch"] == 1
    assert [r["epoch"] for r in csv.DictReader((out / "history.csv").open())] == ["1"]
    assert not (out / "model.onnx").exists()
    assert train(spec, tmp_path, out, "--resume", "--overwrite") == 2
    assert "give one of them" in capsys.readouterr().err


# A child process that trains and SIGKILLs itself at a chosen point of epoch KILL_AT's save.
KILLER = """
import json, os, signal, sys
import numpy as np
import dnnspec.checkpoint as ck
from dnnspec.cli import main

where, kill_at = sys.argv[1], int(sys.argv[2])
real_save, real_savez = ck.save_checkpoint, np.savez

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def save_checkpoint(path, net, opt, best, state):  # the checkpoint is on disk, history.csv not yet
    real_save(path, net, opt, best, state)
    if where == "after-checkpoint" and state["epoch"] == kill_at:
        die()

def savez(file, **arrays):  # half-way through writing the checkpoint's temporary file
    real_savez(file, **arrays)
    if where == "inside-checkpoint" and "opt/t" in arrays \\
            and json.loads(arrays["meta"].tobytes())["epoch"] == kill_at:
        file.flush()
        die()

ck.save_checkpoint, np.savez = save_checkpoint, savez
sys.exit(main(["train", *sys.argv[3:]]))
"""


def killed_run(spec, tmp_path, where, kill_at, epochs=3):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(script), where, str(kill_at), str(spec), "--data",
                        str(tmp_path / "blobs.npz"), "--out", str(out), "--epochs", str(epochs)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr  # really killed, at the chosen point
    return out


def history_epochs(out):
    return [r["epoch"] for r in csv.DictReader((out / "history.csv").open())]


def test_sigkill_after_the_checkpoint_loses_no_history(spec, tmp_path, capsys):
    from dnnspec.plots import read_history

    out = killed_run(spec, tmp_path, "after-checkpoint", kill_at=2)
    assert meta(out / "checkpoint.npz")["epoch"] == 2 and history_epochs(out) == ["1"]  # the crash state
    assert [r["epoch"] for r in read_history(out)] == ["1", "2"]  # plot draws what the checkpoint holds
    assert train(spec, tmp_path, out, "--epochs", "2", "--resume") == 0
    assert "nothing to do: 2 of 2 epochs" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in meta(out / "checkpoint.npz")["rows"]],
                                                              rel=1e-5)


def test_sigkill_inside_the_checkpoint_write_leaves_no_temporary_after_resume(spec, tmp_path, capsys):
    out = killed_run(spec, tmp_path, "inside-checkpoint", kill_at=2)
    assert len(list(out.glob(".checkpoint.npz.*.tmp"))) == 1 and meta(out / "checkpoint.npz")["epoch"] == 1
    assert train(spec, tmp_path, out, "--epochs", "3", "--resume") == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    text = capsys.readouterr().out
    assert f"resuming at epoch 2 of 3: {out / 'checkpoint.npz'} holds 1 epoch\n" in text
    assert history_epochs(out) == ["1", "2", "3"] and meta(out / "checkpoint.npz")["epoch"] == 3


def test_init_starts_from_another_runs_weights(spec, tmp_path, capsys):
    """--init copies every array of a run (here: before a step with a negligible learning rate)."""
    data = ["--data", str(tmp_path / "blobs.npz"), "--progress", "none"]
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"),
                 "--epochs", "1", "--lr", "1e-12"]) == 0
    assert "starting from the weights of" in capsys.readouterr().out
    a, b = np.load(tmp_path / "a" / "best.npz"), np.load(tmp_path / "b" / "best.npz")
    for k in ("param/dense1.kernel", "param/dense2.bias"):
        np.testing.assert_allclose(b[k], a[k], atol=1e-8)
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "c"), "--epochs", "1", "--lr", "1e-12"]) == 0
    assert not np.allclose(np.load(tmp_path / "c" / "best.npz")["param/dense1.kernel"], a["param/dense1.kernel"])


def test_init_from_another_network_or_with_resume_is_one_line(spec, tmp_path, capsys):
    data = ["--data", str(tmp_path / "blobs.npz"), "--progress", "none"]
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "a")]) == 0
    wide = tmp_path / "wide.dnn"
    wide.write_text(SPEC.replace("dense 16", "dense 8"))
    capsys.readouterr()
    assert main(["train", str(wide), *data, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init" in err and "dense1.kernel" in err and "(2, 8)" in err, err
    assert not (tmp_path / "b").exists()  # refused before any training
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "a"), "--init", str(tmp_path / "a"),
                 "--resume"]) != 0
    assert "--init starts a new run" in capsys.readouterr().err
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "e"), "--init", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere: no such --init run" in err, err


def test_init_keeps_the_input_statistics_the_weights_were_learned_with(spec, tmp_path):
    normed = tmp_path / "normed.dnn"
    normed.write_text(SPEC.replace("input [2]\n", "input [2]\nnormalize auto\n"))
    data = ["--data", str(tmp_path / "blobs.npz"), "--progress", "none"]
    assert main(["train", str(normed), *data, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", str(normed), *data, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"),
                 "--limit", "60", "--epochs", "1"]) == 0
    assert main(["train", str(normed), *data, "--out", str(tmp_path / "c"), "--limit", "60", "--epochs", "1"]) == 0
    a, b, c = (np.load(tmp_path / r / "best.npz")["param/input.mean"] for r in "abc")
    np.testing.assert_array_equal(b, a)
    assert not np.array_equal(c, a)  # measured on the 60 examples: the statistics --init keeps differ


def test_runs_that_continue_a_runs_weights_validate_on_its_held_out_examples(spec, tmp_path):
    """prune --finetune and train --init draw the validation split from the source run's state, not from
    a generator that initialising the (smaller) network has moved on: the same held-out examples."""
    from dnnspec.checkpoint import split_state

    data = ["--data", str(tmp_path / "blobs.npz"), "--progress", "none"]
    assert main(["train", str(spec), *data, "--out", str(tmp_path / "a")]) == 0
    assert main(["prune", str(tmp_path / "a"), "--keep", "0.5", "-o", str(tmp_path / "p"), "--finetune", "1",
                 *data]) == 0
    assert main(["train", str(tmp_path / "p" / "spec.dnn"), *data, "--out", str(tmp_path / "d"), "--init",
                 str(tmp_path / "p"), "--epochs", "1"]) == 0
    assert main(["train", str(tmp_path / "p" / "spec.dnn"), *data, "--out", str(tmp_path / "s"), "--epochs", "1"]) == 0
    source = split_state(tmp_path / "a")
    assert source is not None and split_state(tmp_path / "p") == source == split_state(tmp_path / "d")
    assert split_state(tmp_path / "s") != source  # a fresh start: its own generator, after its own init
