"""Experiment tracking: TensorBoard event files read back with TensorBoard's reader, MLflow in a local file store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.cli import main
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import UsageError
from dnnspec.tracking import Trackers, layer_groups, mlflow_uri

ROOT = Path(__file__).resolve().parents[1]


def blobs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y


def model():
    return ir.model_from_layers((2,), [("dense", {"units": 8}), ("relu", {}), ("batchnorm", {}),
                                       ("dense", {"units": 3}), ("softmax", {})], optimizer_options={"lr": 0.01},
                                train={"epochs": 3, "batch": 32, "seed": 1, "validation": 0.2})


def test_layer_groups():
    assert layer_groups(["dense1.kernel", "dense1.bias", "bn1.gamma", "bn1.beta", "prelu1.alpha"]) == {
        "dense1": ["dense1.kernel", "dense1.bias"], "bn1": ["bn1.gamma", "bn1.beta"], "prelu1": ["prelu1.alpha"]}


def test_tensorboard_scalars_read_back_with_tensorboards_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net = Net(model())
    seen: list[dict[str, float]] = []  # per step: each layer's gradient norm, computed here independently
    inner = net.loss_and_grads

    def spy(xb, yb, rng=None):
        loss, grads = inner(xb, yb, rng)
        seen.append({layer: float(np.sqrt(sum(np.sum(grads[f"{layer}.{p}"].astype(np.float64) ** 2)
                                               for p in ps)))
                     for layer, ps in (("dense1", ("kernel", "bias")), ("bn1", ("gamma", "beta")),
                                       ("dense2", ("kernel", "bias")))})
        return loss, grads

    net.loss_and_grads = spy
    x, y = blobs()
    with Trackers(net, tensorboard=tmp_path / "tb") as t:
        h = fit(net, x, y, progress=False, tracker=t, x_test=x[:100], y_test=y[:100])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "seconds", "grad_norm/dense1",
            "grad_norm/bn1", "grad_norm/dense2", "test/loss", "test/accuracy"} <= tags

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for key, tag in (("loss", "loss/train"), ("val_accuracy", "accuracy/val"), ("lr", "lr")):
        assert [s for s, _ in series(tag)] == [1, 2, 3]
        np.testing.assert_allclose([v for _, v in series(tag)], h[key], rtol=1e-6)
    steps = len(seen) // 3  # the same number of steps each epoch
    for layer in ("dense1", "bn1", "dense2"):
        want = [np.mean([s[layer] for s in seen[e * steps:(e + 1) * steps]]) for e in range(3)]
        np.testing.assert_allclose([v for _, v in series(f"grad_norm/{layer}")], want, rtol=1e-5)
    assert series("test/accuracy") == [(3, pytest.approx(h.test["accuracy"], rel=1e-6))]


@pytest.fixture
def cli_run(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:100], y_test=y[:100])
    (tmp_path / "t.dnn").write_text("network tracked\ninput [2]\nclasses 3\nlayers {\n  dense 8\n  relu\n"
                                    "  dense 3\n  softmax\n}\noptimizer adam lr=0.02\n"
                                    "train epochs=3 batch=32 validation=0.2 seed=4\n")
    return tmp_path


def test_mlflow_logs_params_metrics_and_files_to_a_file_store(cli_run, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    d = cli_run
    assert main(["train", str(d / "t.dnn"), "--data", str(d / "b.npz"), "--out", str(d / "run"),
                 "--mlflow", str(d / "mlruns"), "--tensorboard", str(d / "tb"), "--progress", "none"]) == 0
    assert "warning" not in capsys.readouterr().err
    client = MlflowClient(tracking_uri=mlflow_uri(str(d / "mlruns")))
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    p = run.data.params
    assert p["optimizer"] == "adam" and float(p["optimizer.lr"]) == 0.02 and p["train.epochs"] == "3"
    assert p["data"] == "b" and p["classes"] == "3" and int(p["parameters"]) == 2 * 8 + 8 + 8 * 3 + 3
    rows = list(csv.DictReader((d / "run" / "history.csv").open()))
    loss = client.get_metric_history(run.info.run_id, "loss/train")
    assert [m.step for m in loss] == [1, 2, 3]
    np.testing.assert_allclose([m.value for m in loss], [float(r["loss"]) for r in rows], rtol=1e-5)
    saved = json.loads((d / "run" / "metrics.json").read_text())
    assert run.data.metrics["test/accuracy"] == pytest.approx(saved["accuracy"])
    assert "grad_norm/dense1" in run.data.metrics and "grad_norm/dense2" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"spec.dnn", "history.csv", "metrics.json", "confusion.png", "best.npz", "curves.png"} <= files


def test_a_failed_run_ends_failed_and_training_survives_a_broken_tracker(cli_run, tmp_path, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    x, y = blobs()
    net = Net(model())
    with pytest.raises(RuntimeError, match="stop here"):
        with Trackers(net, mlflow=str(tmp_path / "ml"), run_dir=tmp_path / "r1") as t:
            fit(net, x, y, progress=False, tracker=t, on_epoch=lambda e, r: (_ for _ in ()).throw(RuntimeError(
                "stop here")))
    client = MlflowClient(tracking_uri=mlflow_uri(str(tmp_path / "ml")))
    (run,) = client.search_runs([client.get_experiment_by_name(net.model.name).experiment_id])
    assert run.info.status == "FAILED"

    class Broken:
        name = "Broken"

        def scalars(self, step, values):
            raise OSError("disk full")

        def close(self, status):
            pass

    with Trackers(Net(model())) as t:
        t.writers.append(Broken())
        h = fit(Net(model()), x, y, progress=False, tracker=t)
    assert len(h) == 3 and t.writers == []
    err = capsys.readouterr().err
    assert err.count("dnnspec: warning: Broken logging stopped: disk full") == 1


def test_missing_extras_are_one_line_usage_errors(monkeypatch, cli_run, capsys):
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorboard", "mlflow")] + ["tensorboard", "mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (earlier tests imported them)
    with pytest.raises(UsageError, match=r"--tensorboard needs the tensorboard package: pip install 'dnnspec\[track"):
        Trackers(Net(model()), tensorboard=cli_run / "tb")
    d = cli_run
    assert main(["train", str(d / "t.dnn"), "--data", str(d / "b.npz"), "--out", str(d / "r"),
                 "--mlflow", str(d / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dnnspec: error: --mlflow needs the mlflow package: pip install 'dnnspec[track]'"


def test_unreachable_mlflow_server_is_refused_before_training(cli_run, capsys):
    pytest.importorskip("mlflow")
    d = cli_run
    rc = main(["train", str(d / "t.dnn"), "--data", str(d / "b.npz"), "--out", str(d / "r"),
               "--mlflow", "http://127.0.0.1:9"], )  # port 9 (discard): nothing listens
    cap = capsys.readouterr()
    assert rc == 2 and "--mlflow http://127.0.0.1:9: cannot start an MLflow run" in cap.err
    assert "epoch" not in cap.out and len(cap.err.strip().splitlines()) == 1


def test_trackers_are_imported_only_when_asked_for(cli_run):
    code = ("import sys; from dnnspec.cli import main; "
            f"rc = main(['train', {str(cli_run / 't.dnn')!r}, '--data', {str(cli_run / 'b.npz')!r}, "
            f"'--out', {str(cli_run / 'r')!r}, '--progress', 'lines']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'mlflow', 'tqdm'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
