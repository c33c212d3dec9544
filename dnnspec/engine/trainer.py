"""The training loop: epochs of shuffled mini-batches, validation, early stopping, checkpoints, resume.

    history = fit(net, x, y, epochs=15, run_dir="runs/fashion_mlp")

Randomness: one generator drives everything. ``net.rng`` (seeded from ``train.seed``,
already used for the initial weights) then draws, in order, the validation split, each
epoch's shuffle, dropout masks and augmentation. Passing ``seed=`` to fit replaces it with
a fresh generator of that seed. Same spec, data and seed: bit-identical weights.

Per epoch: the training rows are visited in a new random order in batches of ``batch``
(the last one may be smaller); each batch is gathered by index into a preallocated buffer
(the data set is never copied), handed to the net in its raw dtype (the net casts it to
float32), augmented first when the spec has ``augment`` steps and images, then mixed when it
has mixup or cutmix (dnnspec.augment.Mixer: the loss then mixes the labels alike, ``mix=`` of
dnnspec.engine.losses, and the running accuracy counts the label with the larger weight);
with ``teacher=`` the loss is the distillation loss on that very batch (dnnspec.engine.distill),
whose hard term is the mixed loss when the batch was mixed. The learning
rate follows the schedule at the fractional epoch ``e + i/steps``. Training loss and
accuracy are running means over the epoch's batches (training mode); validation loss and
accuracy are measured after the epoch in evaluation mode.

Early stopping (``early_stop = patience > 0``) watches the validation loss (the training
loss when there is no validation data): after ``patience`` epochs without improvement
training stops, and at the end the weights of the best epoch are restored.

Divergence: a non-finite loss or gradient stops training at once with a DivergenceError
naming the epoch, the step and the first layer (in forward order) whose gradient is not
finite; the checkpoint on disk is the last finite one.

Run folder (``run_dir``): ``checkpoint.npz`` (every ``checkpoint_every`` epochs and at the
end; everything needed to resume), ``best.npz`` (weights of the best epoch, loadable with
``dnnspec.load``), ``history.csv``, ``spec.dnn`` and ``curves.png`` (when matplotlib is there);
with test data, the evaluation report of the final weights on it: ``metrics.json`` and
``confusion.png`` (dnnspec.evaluation).
Resume restores weights, optimizer state, generator state, history and early-stopping state
from ``checkpoint.npz``: a run stopped after epoch k and resumed ends bit-identical to one
that never stopped (for schedules that depend on the total epoch count, with the same
``epochs``).

Runs are never silently lost. A folder that already holds a run is refused unless
``resume=True`` continues it or ``overwrite=True`` replaces it (its files are deleted, the
checkpoint first, before the new run writes any). The checkpoint holds the history rows
and is the commit point of an epoch: ``history.csv`` is a copy of its rows, rewritten
after it, and repaired from it on resume, so a kill between the two writes loses nothing.
Temporaries a killed write left behind are removed at the start of a run.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .. import fileio, memory
from ..errors import CheckpointError, DivergenceError, UsageError
from ..history import (  # the run folder's layout, shared with its readers (plots, export)
    BEST,
    CHECKPOINT,
    COLUMNS,
    CONFUSION,
    HISTORY,
    METRICS,
    RUN_FILES,
    SPEC_COPY,
    History,
)
from ..progress import final_line, make_progress
from .optim import global_norm, make_optimizer
from .schedules import make_schedule

TRAIN_KEYS = ("epochs", "batch", "validation", "seed", "early_stop", "checkpoint_every")


@dataclass
class _State:
    """What a checkpoint must hold besides arrays, to resume bit for bit."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    rows: list[dict[str, float]] = field(default_factory=list)


# --- entry point ----------------------------------------------------------------------


def fit(net: Any, x: np.ndarray, y: np.ndarray, *, x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None, validation: float | None = None, epochs: int | None = None,
        batch: int | None = None, lr: float | None = None, seed: int | None = None,
        run_dir: str | Path | None = None, resume: bool = False, augment: Any = None,
        progress: str | bool | None = "auto", x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None, on_epoch: Callable[[int, dict], None] | None = None,
        out: TextIO | None = None, overwrite: bool = False, tracker: Any = None, teacher: Any = None,
        measure_input: bool = True, split_state: dict | None = None, plots: bool = True,
        **overrides: Any) -> History:
    """Train ``net`` in place on raw inputs ``x`` (N, *input.shape) and labels ``y``; return the History.

    Keyword arguments override the spec's ``train`` recipe (``early_stop=``,
    ``checkpoint_every=`` via ``overrides``) and the optimizer's ``lr``. ``augment``: None
    follows the spec, False turns it off (mixup and cutmix too), or pass a callable ``aug(batch, rng)``
    (it replaces the per-image ops; mixup and cutmix still follow the spec).
    ``progress``: "auto" (a bar on a terminal, plain lines otherwise), "bar", "lines", or
    False/None/"none" for silence; written to ``out`` (default stdout). ``on_epoch(epoch,
    row)`` is called after each epoch's row is recorded (raising stops training). ``tracker``
    (dnnspec.tracking.Trackers, or any object with ``step(grads, names)``, ``epoch(row, best)``
    and ``end(history)``) sees each step's gradients, each epoch's row and the end.
    With ``x_test``/``y_test`` the final weights are evaluated on them (``history.report``;
    ``metrics.json`` and ``confusion.png`` in ``run_dir``), then the final line is written.
    A ``run_dir`` that holds a run needs ``resume=True`` or ``overwrite=True`` (:func:`check_run_dir`).
    ``teacher``: knowledge distillation (:mod:`dnnspec.engine.distill`): a Distiller, or an ONNX
    path or callable raw batch -> logits (N, K) with the default temperature and weight.
    ``measure_input=False`` keeps the net's ``input.mean``/``input.std`` (normalize auto) instead of
    measuring them on the training split: for weights learned with them (fine-tuning a pruned run).
    ``split_state``: the generator state to draw the validation split from instead of the net's
    current one (``checkpoint.split_state(RUN)`` of the run whose weights this one continues), so
    that on the same data it validates on that run's held-out examples; a resume uses its own.
    ``plots=False``: no curves.png or confusion.png in ``run_dir`` (history.csv and metrics.json hold
    their numbers; ``dnnspec plot RUN`` draws the curves later): search trials, where drawing the two
    took longer than training a small spec.
    """
    t0 = time.perf_counter()
    cfg = _recipe(net, epochs, batch, validation, seed, overrides)
    distiller = _distiller(net, teacher)
    run = Path(run_dir) if run_dir is not None else None
    check_run_dir(run, resume=resume, overwrite=overwrite)
    if run is not None:
        fileio.remove_temporaries(run, RUN_FILES)  # left by a write that was killed
    if seed is not None:
        net.rng = np.random.default_rng(seed)
    rng = net.rng
    ckpt = _read_resume(run, net) if resume else None
    if ckpt is not None:
        rng.bit_generator.state = ckpt.meta["rng_split"]
    elif split_state is not None:
        rng.bit_generator.state = split_state
    split_from = rng.bit_generator.state
    train_idx, val = _split(x, y, x_val, y_val, cfg["validation"], rng)
    if ckpt is None and measure_input and net.model.normalize.mode == "auto":
        net.set_input_stats(x if len(train_idx) == len(x) else x[train_idx])
    loop = _Loop(net, x, y, train_idx, val, cfg, lr, _augmenter(net, x, augment), run,
                 make_progress(progress, out), on_epoch, tracker, distiller, _mixer(net, augment))
    if ckpt is not None:
        loop.restore(ckpt)
    else:
        loop.start_fresh(overwrite)
    loop.split_state = split_from
    try:
        history = loop.run()
        if x_test is not None and y_test is not None:
            history.report = _test_report(net, x_test, y_test, run, plots)
            history.test = history.report.summary()
        if run is not None and plots:
            _write_curves(run, history.rows, history.best_epoch, history.test)
        history.seconds = time.perf_counter() - t0
        if tracker is not None:
            tracker.end(history)
    finally:
        loop.progress.close(None)  # the bar goes even when training stops with an error
    loop.progress.line(final_line(history, loop.progress.width))
    return history


def _test_report(net: Any, x_test: np.ndarray, y_test: np.ndarray, run: Path | None, plots: bool = True) -> Any:
    """The evaluation of the final weights on the test split; metrics.json and (``plots``) confusion.png in ``run``."""
    from ..report import evaluate_net

    report = evaluate_net(net, x_test, y_test, "test split")
    if run is not None:
        report.write(run, png=plots)
    return report


def _recipe(net: Any, epochs, batch, validation, seed, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec's ``train`` options with the call's overrides applied; UsageError for unknown keys."""
    unknown = sorted(set(overrides) - set(TRAIN_KEYS))
    if unknown:
        raise UsageError(f"fit() got an unknown option {unknown[0]!r}; known: {', '.join(TRAIN_KEYS)}, "
                         f"lr, x_val, y_val, run_dir, resume, overwrite, augment, progress")
    cfg = dict(net.model.train)
    given = {"epochs": epochs, "batch": batch, "validation": validation, "seed": seed, **overrides}
    cfg.update({k: v for k, v in given.items() if v is not None})
    for key in ("epochs", "batch"):
        if int(cfg[key]) < 1:
            raise UsageError(f"{key} must be at least 1, found {cfg[key]}")
    if not 0.0 <= float(cfg["validation"]) < 1.0:
        raise UsageError(f"validation must be a fraction in [0, 1), found {cfg['validation']}")
    return cfg


def _split(x, y, x_val, y_val, fraction: float, rng: np.random.Generator):
    """(training row indices, validation (x, y, row indices or None) or None), drawn with ``rng``."""
    n = len(x)
    if len(y) != n:
        raise UsageError(f"x has {n} examples but y has {len(y)}; pass arrays of equal length")
    if x_val is not None:
        return np.arange(n), (x_val, y_val, None)
    n_val = int(round(n * float(fraction)))
    if n_val == 0:
        return np.arange(n), None
    perm = rng.permutation(n)
    if n - n_val < 1:
        raise UsageError(f"validation={fraction} leaves no training examples out of {n}")
    return np.sort(perm[n_val:]), (x, y, np.sort(perm[:n_val]))


def _augmenter(net: Any, x: np.ndarray, augment: Any):
    """The batch transform: the spec's Augmenter for image inputs, a given callable, or None."""
    if augment is False:
        return None
    if augment is not None:
        return augment
    model = net.model
    if not model.augment or model.input.kind != "image":
        return None
    from ..augment import Augmenter

    aug = Augmenter.from_model(model, x)
    return aug if aug else None  # a block of mixup/cutmix only: no per-image ops


def _mixer(net: Any, augment: Any):
    """The spec's mixup/cutmix (dnnspec.augment.Mixer), or None; UsageError for a loss that cannot mix labels."""
    model = net.model
    if augment is False or not model.augment:
        return None
    from ..augment import Mixer
    from ..schema import MIX_LOSSES

    mixer = Mixer.from_model(model)
    if mixer is not None and model.loss.kind not in MIX_LOSSES:  # the front end refuses this; a hand-made IR
        kinds = " and ".join(k for k, v in (("cutmix", mixer.cutmix), ("mixup", mixer.mixup)) if v is not None)
        verb = "mix" if " and " in kinds else "mixes"
        raise UsageError(f"{model.path}: {kinds} {verb} the labels, which needs loss {' or '.join(MIX_LOSSES)}; "
                         f"this model trains with {model.loss.kind}: remove {kinds} from its augment block")
    return mixer


def _distiller(net: Any, teacher: Any):
    """None, or the checked Distiller for ``fit(teacher=...)`` (onnxruntime is imported only then)."""
    if teacher is None:
        return None
    from .distill import make_distiller

    return make_distiller(teacher, net.model)


def _read_resume(run: Path | None, net: Any):
    from ..checkpoint import check_same_spec, load_checkpoint

    if run is None:
        raise UsageError("resume needs a run folder: pass run_dir= (or --out)")
    path = run / CHECKPOINT
    if not path.exists():
        fix = "start it over with --overwrite" if describe_run(run) else "train without --resume first"
        raise CheckpointError(f"{path}: no checkpoint to resume; {fix}")
    ckpt = load_checkpoint(path)
    check_same_spec(ckpt, net)
    return ckpt


# --- the run folder --------------------------------------------------------------------


def check_run_dir(run_dir: str | Path | None, *, resume: bool = False, overwrite: bool = False) -> None:
    """UsageError unless a run may be written into ``run_dir``.

    A folder that already holds a run (a checkpoint, a history or best weights) is refused
    with its epoch count, unless ``resume`` continues it or ``overwrite`` replaces it.
    """
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one of them")
    if run_dir is None:
        return
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise UsageError(f"{run}: is a file, not a run folder; choose another --out (run_dir=)")
    held = None if resume or overwrite else describe_run(run)
    if held:
        raise UsageError(f"{run}: already holds a run ({held}); add --resume (resume=True) to continue it "
                         f"or --overwrite (overwrite=True) to replace it")


def describe_run(run: Path) -> str | None:
    """What an earlier run left in ``run``, e.g. "tiny, 3 of 5 epochs in checkpoint.npz"; None when nothing."""
    from ..checkpoint import read_meta

    if (run / CHECKPOINT).is_file():
        try:
            meta = read_meta(run / CHECKPOINT)
            name = meta["model"]["name"]
            return f"{name}, {int(meta['epoch'])} of {_epochs(int(meta['epochs']))} in {CHECKPOINT}"
        except (CheckpointError, KeyError, TypeError, ValueError):
            return f"an unreadable {CHECKPOINT}"
    if (run / HISTORY).is_file():
        try:
            with open(run / HISTORY, newline="", encoding="utf-8") as f:
                rows = sum(1 for _ in csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return f"an unreadable {HISTORY}, no checkpoint"
        return f"{_epochs(rows)} in {HISTORY}, no checkpoint"
    if (run / BEST).is_file():
        return f"best weights in {BEST}, no checkpoint"
    return None


def _epochs(k: int) -> str:
    return f"{k} epoch" + ("" if k == 1 else "s")


def clear_run(run: Path) -> None:
    """Delete every file of a run in ``run`` (RUN_FILES, the checkpoint first); other files stay."""
    for name in RUN_FILES:
        try:
            (run / name).unlink(missing_ok=True)
        except OSError as e:
            raise UsageError(f"cannot replace the run in {run}: cannot delete {run / name} "
                             f"({e.strerror or e}); delete it by hand or choose another --out") from None


def write_history(run: Path, rows: list[dict[str, Any]]) -> None:
    """``run/history.csv`` from the rows, atomically (a copy of the checkpoint's history)."""
    from ..checkpoint import atomic_write_text

    atomic_write_text(run / HISTORY, History(rows).to_csv())


def evaluate(net: Any, x: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None,
             batch: int | None = None) -> dict[str, float]:
    """Mean loss (and accuracy) in evaluation mode over rows ``idx`` of x (all rows if None), in chunks.

    ``batch`` rows a chunk; default :func:`dnnspec.memory.eval_batch` (2048, fewer for big networks).
    """
    if batch is None:
        batch = memory.eval_batch(net.model)
    n = len(x) if idx is None else len(idx)
    sums: dict[str, float] = {}
    for i in range(0, n, batch):
        rows = slice(i, i + batch) if idx is None else idx[i:i + batch]
        r = net.evaluate(x[rows], y[rows], batch=batch)
        k = min(batch, n - i)
        for key, v in r.items():
            sums[key] = sums.get(key, 0.0) + v * k
    return {k: v / max(n, 1) for k, v in sums.items()}


# --- the loop ----------------------------------------------------------------------------


class _Loop:
    """One training run's state: optimizer, schedule, buffers, history; ``run()`` does the epochs."""

    def __init__(self, net, x, y, train_idx, val, cfg, lr, augment, run, progress, on_epoch, tracker=None,
                 distiller=None, mixer=None):
        self.net, self.x, self.y, self.idx, self.val = net, x, y, train_idx, val
        self.cfg, self.augment, self.run_dir, self.progress, self.on_epoch = cfg, augment, run, progress, on_epoch
        self.tracker, self.distiller, self.mixer = tracker, distiller, mixer
        self.epochs = int(cfg["epochs"])
        self.batch = min(int(cfg["batch"]), len(train_idx))
        self.steps = math.ceil(len(train_idx) / self.batch)
        model = net.model
        opt_step = model.optimizer
        if lr is not None:
            from ..ir import FrozenDict, Step

            opt_step = Step(opt_step.kind, FrozenDict({**opt_step.options, "lr": float(lr)}))
        self.opt = make_optimizer(opt_step, net.params, net.trainable)
        self.schedule = make_schedule(model.schedule, self.opt.lr, self.epochs, self.steps)
        self.classify = model.task.kind == "classification"
        self.xbuf = np.empty((self.batch, *x.shape[1:]), x.dtype)
        self.ybuf = np.empty((self.batch, *y.shape[1:]), y.dtype)
        self.state = _State()
        self.best: dict[str, np.ndarray] | None = None
        self.split_state: dict | None = None

    # --- starting -------------------------------------------------------------------

    def start_fresh(self, overwrite: bool = False) -> None:
        """A new run: with ``overwrite``, the earlier run's files go first (none of it is half-kept)."""
        if self.run_dir is None:
            return
        if overwrite:
            clear_run(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the run folder {self.run_dir} ({e.strerror or e}); "
                             f"choose another --out") from None
        if self.net.model.source:
            from ..checkpoint import atomic_write_text

            atomic_write_text(self.run_dir / SPEC_COPY, self.net.model.source)

    def restore(self, ckpt) -> None:
        """Put weights, optimizer, generator and bookkeeping back as the checkpoint saved them.

        Also rewrites history.csv from the checkpoint's rows (a kill after the checkpoint,
        before history.csv, left it an epoch short) and says where training goes on.
        """
        from .distill import check_resume

        meta = ckpt.meta
        check_resume(meta.get("distill"), self.distiller, ckpt.path)  # before anything is restored
        for name, arr in ckpt.params.items():
            self.net.params[name][...] = arr
        try:
            self.opt.load_state_dict(ckpt.optimizer)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: optimizer state does not fit the spec's optimizer "
                                  f"({self.opt.kind}): {e}; train again without --resume") from None
        self.net.rng.bit_generator.state = meta["rng"]
        self.state = _State(meta["epoch"], meta["best_loss"] if meta["best_loss"] is not None else math.inf,
                            meta["best_epoch"], meta["wait"], meta["stopped_early"], list(meta["rows"]))
        self.best = {k: v.copy() for k, v in ckpt.best.items()} or None
        write_history(self.run_dir, self.state.rows)
        st = self.state
        if st.epoch < self.epochs and not st.stopped_early:
            self.progress.line(f"resuming at epoch {st.epoch + 1} of {self.epochs}: {ckpt.path} holds "
                               f"{_epochs(st.epoch)}")

    # --- epochs ---------------------------------------------------------------------

    def run(self) -> History:
        st = self.state
        if st.epoch >= self.epochs or st.stopped_early:
            self.progress.line(f"nothing to do: {st.epoch} of {self.epochs} epochs already trained"
                               + (" (stopped early)" if st.stopped_early else ""))
        wrote = True
        self.progress.start(self.epochs, self.steps, st.epoch)
        while st.epoch < self.epochs and not st.stopped_early:
            with self.net.threads():  # whole epochs, optimizer steps included: BLAS stays put
                row = self._epoch(st.epoch)
            st.rows.append(row)
            self._early_stop(row)
            st.epoch += 1
            best = st.best_epoch == st.epoch
            self.progress.epoch_end(row, best)
            if self.tracker is not None:
                self.tracker.epoch(row, best)
            every = int(self.cfg["checkpoint_every"])
            wrote = every > 0 and st.epoch % every == 0
            if wrote:
                self._save()
            if self.on_epoch is not None:
                self.on_epoch(st.epoch, row)
        if not wrote:
            self._save()  # the last epoch's weights: what a resume continues from
        if int(self.cfg["early_stop"]) > 0 and self.best is not None:
            for k, v in self.best.items():
                self.net.params[k][...] = v
        return History(list(st.rows), st.best_epoch, st.stopped_early,
                       run_dir=str(self.run_dir) if self.run_dir else None)

    def _epoch(self, e: int) -> dict[str, float]:
        net, rng, steps, b = self.net, self.net.rng, self.steps, self.batch
        order = self.idx[rng.permutation(len(self.idx))]
        t0 = time.perf_counter()
        loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
        # overflow/invalid warnings are replaced by our own finite checks (DivergenceError)
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        errstate.__enter__()
        try:
            for i in range(steps):
                rows = order[i * b:(i + 1) * b]
                xb, yb = self._gather(rows)
                if self.augment is not None:
                    xb = self.augment(xb, rng)
                mix = None
                if self.mixer is not None:
                    xb, mix = self.mixer(xb, rng)
                loss, grads = self._loss_and_grads(xb, yb, mix)
                norm = global_norm(grads, net.trainable)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self._diverged(e, i, loss, grads)
                lr = self.schedule(e + i / steps)
                if self.tracker is not None:  # before the step: optimizers may reuse the gradient buffers
                    self.tracker.step(grads, net.trainable)
                self.opt.step(net.params, grads, lr, grad_norm=norm)
                k = len(rows)
                loss_sum += loss * k
                seen += k
                if self.classify:  # running accuracy from this batch's logits: no second forward
                    yk = yb if mix is None else mix.dominant(yb)  # a mixed batch: its larger-weight label
                    correct += int(np.count_nonzero(net.classify(net.last_logits) == yk.reshape(k)))
                self.progress.step(e, i + 1, loss_sum / seen, correct / seen if self.classify else None)
        finally:
            errstate.__exit__(None, None, None)
        self._check_weights(e, steps)
        row: dict[str, float] = {"epoch": e + 1, "lr": lr, "loss": loss_sum / seen,
                                 "accuracy": correct / seen if self.classify else None}
        if self.val is not None:
            xv, yv, iv = self.val
            r = evaluate(net, xv, yv, iv)
            row["val_loss"], row["val_accuracy"] = r["loss"], r.get("accuracy")
        row["seconds"] = time.perf_counter() - t0
        return row

    def _loss_and_grads(self, xb: np.ndarray, yb: np.ndarray, mix: Any) -> tuple[float, dict[str, np.ndarray]]:
        """One step's loss and gradients: distilled or not, with the labels mixed as ``mix`` says (or not)."""
        net, rng = self.net, self.net.rng
        plain = net.loss_fn
        if mix is not None:  # Net fuses its head with net.loss_fn: this step's loss mixes the labels
            net.loss_fn = partial(plain, mix=mix)
        try:
            if self.distiller is not None:  # the teacher sees the very batch the student trains on
                return self.distiller.loss_and_grads(net, xb, yb, rng)
            return net.loss_and_grads(xb, yb, rng)
        finally:
            net.loss_fn = plain  # validation and evaluation never mix

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x[rows], y[rows] into the preallocated batch buffers (views of them for a short batch)."""
        k = len(rows)
        xb, yb = self.xbuf[:k], self.ybuf[:k]
        np.take(self.x, rows, axis=0, out=xb)
        np.take(self.y, rows, axis=0, out=yb)
        return xb, yb

    # --- checks ---------------------------------------------------------------------

    def _diverged(self, e: int, i: int, loss: float, grads: dict[str, np.ndarray]) -> None:
        bad = next((n for n in self.net.trainable if not np.all(np.isfinite(grads[n]))), None)
        where = (f"the gradient of layer {bad.rsplit('.', 1)[0]} ({bad}) is the first that is not finite"
                 if bad else "every gradient is finite")
        raise DivergenceError(
            f"training diverged at epoch {e + 1}, step {i + 1}: the loss is {loss}; {where}; "
            f"lower the learning rate (now {self.schedule(e + i / self.steps):g}) or set clip_norm"
            + self._kept())

    def _check_weights(self, e: int, steps: int) -> None:
        for n, w in self.net.params.items():
            if not np.all(np.isfinite(w)):
                raise DivergenceError(f"training diverged in epoch {e + 1} (by step {steps}): weight {n} is not "
                                      f"finite though every gradient was; lower the learning rate" + self._kept())

    def _kept(self) -> str:
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).exists():
            return f"; the last finite checkpoint is kept in {self.run_dir / CHECKPOINT}"
        return ""

    def _early_stop(self, row: dict[str, float]) -> None:
        st = self.state
        watched = row.get("val_loss") if row.get("val_loss") is not None else row["loss"]
        if watched < st.best_loss:
            st.best_loss, st.best_epoch, st.wait = watched, int(row["epoch"]), 0
            self.best = {k: v.copy() for k, v in self.net.params.items()}
            if self.run_dir is not None:
                self.net.save(self.run_dir / BEST)
            return
        st.wait += 1
        patience = int(self.cfg["early_stop"])
        if patience > 0 and st.wait >= patience:
            st.stopped_early = True
            self.progress.line(f"early stop: no better validation loss for {patience} epochs; "
                               f"restoring epoch {st.best_epoch}")

    # --- files ----------------------------------------------------------------------

    def _save(self) -> None:
        """The checkpoint (with the history rows: the commit point of the epochs), then history.csv from it."""
        if self.run_dir is None:
            return
        from ..checkpoint import save_checkpoint

        st = self.state
        meta = {"epoch": st.epoch, "epochs": self.epochs, "best_loss": None if math.isinf(st.best_loss)
                else st.best_loss, "best_epoch": st.best_epoch, "wait": st.wait, "stopped_early": st.stopped_early,
                "rows": st.rows, "rng": self.net.rng.bit_generator.state, "rng_split": self.split_state,
                "train": dict(self.cfg), "distill": self.distiller.describe() if self.distiller else None}
        save_checkpoint(self.run_dir / CHECKPOINT, self.net, self.opt.state_dict(), self.best, meta)
        write_history(self.run_dir, st.rows)  # killed before this: restore() and plots.read_history repair it


# --- output ---------------------------------------------------------------------------------------


def _write_curves(run: Path, rows: list[dict[str, Any]], best_epoch: int | None = None,
                  test: dict[str, float] | None = None) -> None:
    """curves.png (best epoch and test result marked) through dnnspec.plots when matplotlib is installed."""
    try:
        from ..plots import write_curves
    except ImportError:
        return
    try:
        write_curves(run, rows, best_epoch, test)
    except ImportError:
        return


__all__ = ["BEST", "CHECKPOINT", "COLUMNS", "CONFUSION", "HISTORY", "METRICS", "RUN_FILES", "History",
           "check_run_dir", "clear_run",
           "describe_run", "evaluate", "fit", "write_history"]
