"""Experiment tracking: TensorBoard event files and MLflow runs, fed by the trainer.

    with Trackers(net, tensorboard="tb/", mlflow="mlruns", run_dir="runs/x", data="fashion-mnist") as t:
        history = fit(net, x, y, run_dir="runs/x", tracker=t, x_test=xt, y_test=yt)

Per epoch (step = the epoch number): ``loss/train``, ``loss/val``, ``accuracy/train``,
``accuracy/val``, ``lr``, ``seconds`` and ``grad_norm/<layer>``: the mean over the epoch's
steps of ||g_layer||_2 = sqrt(sum over the layer's trainable parameters of sum g^2), taken
before clipping and the optimizer step. At the end: ``test/loss``, ``test/accuracy`` (or
``test/mae``, ``test/rmse``, ``test/r2``). MLflow also gets the run's parameters (spec,
optimizer, schedule, train options, data) and its files (spec.dnn, history.csv, curves.png,
metrics.json, confusion.png, best.npz), and the run ends FINISHED, FAILED or KILLED.

Both are optional extras (``pip install 'dnnspec[track]'``: tensorboard, mlflow-skinny),
imported only when asked for. A plain path given to ``--mlflow`` is an MLflow file store,
which MLflow 3 accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``: we set it for that run
when it is not set. A tracker that fails in the middle of training says so once on stderr
and stops; training goes on.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

ARTIFACTS = ("spec.dnn", "history.csv", "curves.png", "metrics.json", "confusion.png", "best.npz")
ROW_TAGS = {"loss": "loss/train", "val_loss": "loss/val", "accuracy": "accuracy/train",
            "val_accuracy": "accuracy/val", "lr": "lr", "seconds": "seconds"}
INSTALL = "pip install 'dnnspec[track]'"


def layer_groups(names: list[str]) -> dict[str, list[str]]:
    """Trainable parameter names grouped by layer, in order: {"dense1": ["dense1.kernel", "dense1.bias"], ...}."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0], []).append(n)
    return groups


def run_params(net: Any, data: str | None = None, run_dir: str | None = None) -> dict[str, str]:
    """The parameters of a run, as MLflow keeps them (strings): spec, network, optimizer, schedule, train."""
    m = net.model
    out = {"network": m.name, "spec": m.path, "input": str(tuple(m.input.shape)), "task": m.task.kind,
           "loss": m.loss.kind, "optimizer": m.optimizer.kind, "schedule": m.schedule.kind,
           "parameters": str(sum(int(net.params[k].size) for k in net.trainable))}
    if m.task.kind == "classification":
        out["classes"] = str(m.task.classes)
    out.update({f"optimizer.{k}": str(v) for k, v in m.optimizer.options.items()})
    out.update({f"schedule.{k}": str(v) for k, v in m.schedule.options.items()})
    out.update({f"train.{k}": str(v) for k, v in m.train.items()})
    if data:
        out["data"] = str(data)
    if run_dir:
        out["run_dir"] = str(run_dir)
    return out


class Trackers:
    """The trainer's ``tracker``: gradient norms per layer, scalars per epoch, to each writer asked for."""

    def __init__(self, net: Any, tensorboard: str | os.PathLike | None = None, mlflow: str | None = None,
                 run_dir: str | os.PathLike | None = None, data: str | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.groups = layer_groups(list(net.trainable))
        self.sums = dict.fromkeys(self.groups, 0.0)
        self.count = 0
        self.last_epoch = 0
        self.writers: list[Any] = []
        if tensorboard is not None:
            self.writers.append(TensorBoardWriter(tensorboard))
        if mlflow is not None:
            extra = {k: str(v) for k, v in (params or {}).items()}
            self.writers.append(MLflowWriter(mlflow, net.model.name, self.run_dir.name if self.run_dir else None,
                                             {**run_params(net, data, run_dir), **extra}))

    # --- the trainer's hooks ------------------------------------------------------------------

    def step(self, grads: dict[str, np.ndarray], names: list[str]) -> None:
        """Add this step's per-layer gradient norms (one dot product per parameter array)."""
        for layer, members in self.groups.items():
            sq = 0.0
            for n in members:
                g = grads[n].reshape(-1)
                sq += float(np.dot(g, g))
            self.sums[layer] += math.sqrt(sq)
        self.count += 1

    def epoch(self, row: dict[str, Any], best: bool = False) -> None:
        """Log the epoch's row and mean gradient norms at step = epoch."""
        values = {tag: float(row[k]) for k, tag in ROW_TAGS.items() if row.get(k) is not None}
        if self.count:
            values.update({f"grad_norm/{layer}": s / self.count for layer, s in self.sums.items()})
        self.sums = dict.fromkeys(self.groups, 0.0)
        self.count = 0
        self.last_epoch = int(row["epoch"])
        self._each("scalars", self.last_epoch, values)

    def end(self, history: Any) -> None:
        """Test metrics at the last epoch's step; MLflow also gets the run folder's files."""
        test = {f"test/{k}": float(v) for k, v in (history.test or {}).items()}
        if history.best_epoch:
            test["best_epoch"] = float(history.best_epoch)
        if test:
            self._each("scalars", self.last_epoch or len(history), test)
        if self.run_dir is not None:
            self._each("artifacts", self.run_dir)

    def _each(self, method: str, *args: Any) -> None:
        for w in list(self.writers):
            try:
                getattr(w, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker's failure must not stop training
                print(f"dnnspec: warning: {w.name} logging stopped: {_first_line(e)}", file=sys.stderr)
                self.writers.remove(w)

    # --- closing --------------------------------------------------------------------------------

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close every writer; an MLflow run ends with ``status`` (FINISHED, FAILED, KILLED)."""
        for w in self.writers:
            try:
                w.close(status)
            except Exception as e:  # noqa: BLE001
                print(f"dnnspec: warning: closing {w.name} failed: {_first_line(e)}", file=sys.stderr)
        self.writers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self.close("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)


# --- TensorBoard -------------------------------------------------------------------------------------


class TensorBoardWriter:
    """Scalars into a TensorBoard event file in ``logdir`` (tensorboard's own EventFileWriter, no TensorFlow)."""

    name = "TensorBoard"

    def __init__(self, logdir: str | os.PathLike) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
        path = Path(logdir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--tensorboard {logdir}: cannot create the folder ({e.strerror or e}); "
                             f"choose another") from None
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventFileWriter(str(path), flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.add_event(self._event(wall_time=time.time(), step=int(step), summary=summary))
        self.writer.flush()  # once per epoch: TensorBoard shows a run while it trains

    def artifacts(self, folder: Path) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


# --- MLflow ------------------------------------------------------------------------------------------


def mlflow_uri(uri: str) -> str:
    """A plain path becomes a ``file://`` URI (an MLflow file store); URIs with a scheme stay."""
    if "://" in uri or uri.startswith(("file:", "sqlite:", "databricks", "postgresql:", "mysql:")):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def check_reachable(uri: str, given: str, timeout: float = 5.0) -> None:
    """UsageError at once when an http(s) tracking server does not accept connections.

    MLflow's client retries a failed request with back-off for about four minutes; a server
    that is not there should stop the run before training, in seconds.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"--mlflow {given}: cannot start an MLflow run: no server answers at "
                         f"{parts.hostname}:{port} ({e.strerror or e}); start it (mlflow server) or give "
                         f"a folder for a local file store") from None


class MLflowWriter:
    """One MLflow run through MlflowClient (no global active run): params, metrics per step, files."""

    name = "MLflow"

    def __init__(self, uri: str, experiment: str, run_name: str | None, params: dict[str, str]) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UsageError(f"--mlflow needs the mlflow package: {INSTALL}") from None
        self.uri = mlflow_uri(uri)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user asked for a file store
        check_reachable(self.uri, uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        except Exception as e:  # noqa: BLE001 - MLflow raises its own and the HTTP client's exceptions
            raise UsageError(f"--mlflow {uri}: cannot start an MLflow run: {_first_line(e)}") from None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, int(step)) for k, v in values.items()
                                                    if math.isfinite(v)])

    def artifacts(self, folder: Path) -> None:
        for name in ARTIFACTS:
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


__all__ = ["ARTIFACTS", "MLflowWriter", "TensorBoardWriter", "Trackers", "layer_groups", "mlflow_uri", "run_params"]
