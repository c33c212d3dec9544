"""``dnnspec train SPEC``: train a spec on data with the NumPy engine, into a run folder.

A thin skin over the Python API: ``frontend.load`` -> ``data.load_data`` ->
``Net(model, seed)`` -> ``trainer.fit``. The run folder (default ``runs/<network name>``)
receives checkpoint.npz, best.npz, history.csv, spec.dnn and curves.png, and with a test
split metrics.json and confusion.png (``--no-plots``: no PNGs). A folder that already holds
a run is refused (before the data is loaded) unless ``--resume`` continues it or
``--overwrite`` replaces it.
``--tensorboard DIR`` and ``--mlflow URI`` log the run (dnnspec.tracking). ``--teacher
TEACHER.onnx`` distils a teacher into the spec (dnnspec.engine.distill; docs/training.md);
``--init RUN`` starts from another run's weights (a pruned run, for a distilled fine-tune).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="the .dnn file to train")
    parser.add_argument("--data", metavar="SOURCE",
                        help="data source: .npz/.csv file (file.csv:label=NAME), image folder (photos/:resize=fit), "
                             "IDX folder, spirals, moons, blobs, fashion-mnist (default: the spec's data statement)")
    parser.add_argument("--label", metavar="NAME",
                        help="a CSV table's label column, by header name (default: the last column)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder with downloaded data sets (e.g. Fashion-MNIST)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<network name>)")
    parser.add_argument("--epochs", type=int, metavar="N", help="override train epochs")
    parser.add_argument("--batch", type=int, metavar="N", help="override train batch")
    parser.add_argument("--lr", type=float, metavar="X", help="override the optimizer's learning rate")
    parser.add_argument("--seed", type=int, metavar="N", help="override train seed (init, shuffling, dropout)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.npz")
    parser.add_argument("--init", metavar="RUN",
                        help="start from the weights of RUN (a run folder or model file of a network with the "
                             "same layers and shapes, e.g. a pruned run) instead of the spec's initialisation")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in RUN_DIR (its files are deleted first)")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N training examples (quick runs)")
    parser.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default="auto",
                        help="progress output (default auto: a bar on a terminal, lines otherwise)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip curves.png and confusion.png (history.csv and metrics.json keep the numbers; "
                             "dnnspec plot RUN_DIR draws the curves later)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="write TensorBoard event files here (loss, accuracy, lr, gradient norms per layer)")
    parser.add_argument("--mlflow", metavar="URI",
                        help="log params, metrics and the run's files to MLflow (a tracking URI, or a folder "
                             "for a local file store)")
    parser.add_argument("--teacher", metavar="TEACHER.onnx",
                        help="knowledge distillation: learn from this exported classifier's soft targets too "
                             "(best exported with dnnspec export --logits)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="distillation temperature, T > 0 (default 4)")
    parser.add_argument("--distill-weight", type=float, metavar="A",
                        help="weight A in [0, 1] of the soft targets; 1 - A goes to the labels (default 0.9)")


def _check_args(args: argparse.Namespace) -> None:
    from ..errors import UsageError

    for flag in ("epochs", "batch", "limit"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UsageError(f"--{flag} must be at least 1, found {v}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, found {args.lr}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2^32), found {args.seed}")
    if args.init is not None and args.resume:
        raise UsageError("--init starts a new run from another run's weights and --resume continues this one: "
                         "give one of them")
    if args.teacher is None and (args.temperature is not None or args.distill_weight is not None):
        flag = "--temperature" if args.temperature is not None else "--distill-weight"
        raise UsageError(f"{flag} is a distillation option: give the teacher with --teacher TEACHER.onnx")


def _distiller(args: argparse.Namespace, model):
    """The checked Distiller for --teacher (before any data is loaded), or None."""
    if args.teacher is None:
        return None
    from ..engine import distill

    t = distill.DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    a = distill.DEFAULT_WEIGHT if args.distill_weight is None else args.distill_weight
    return distill.make_distiller(distill.Distiller(args.teacher, temperature=t, weight=a), model)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import frontend, memory
    from ..checkpoint import split_state
    from ..data import load_data
    from ..dataschema import attach
    from ..engine.net import Net
    from ..engine.trainer import check_run_dir, fit
    from ..progress import final_line

    _check_args(args)
    model = frontend.load(args.spec)
    run_dir = Path(args.out) if args.out else Path("runs") / model.name
    check_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)  # before the data: fail fast
    teacher = _distiller(args, model)
    init = _read_init(args.init, model)  # before the data too
    if args.batch:
        memory.check_batch(model, args.batch)
    batch = args.batch or int(model.train["batch"])
    data = load_data(args.data, model, data_dir=args.data_dir, batch=min(batch, args.limit or batch),
                     label=args.label)
    x, y = data.x_train, data.y_train
    if args.limit is not None:
        x, y = x[:args.limit], y[:args.limit]
    seed = args.seed if args.seed is not None else int(model.train["seed"])
    net = attach(Net(model, seed=seed), data.schema)  # the data's class names, a table's columns (dataschema)
    if init is not None:
        for k, v in init.items():
            net.params[k][...] = v
    out = sys.stdout
    for note in data.notes:
        out.write(note + "\n")
    source = data.name or args.data or model.data
    tracker = _trackers(args, net, run_dir, source)
    taught = "" if teacher is None else (f", distilling {teacher.name} (temperature {teacher.temperature:g}, "
                                        f"weight {teacher.weight:g})")
    started = "" if init is None else f", starting from the weights of {args.init}"
    out.write(f"training {model.name} on {source}: {len(x)} examples{taught}{started}, run folder {run_dir}\n")
    with tracker if tracker is not None else _nothing():
        history = fit(net, x, y, epochs=args.epochs, batch=args.batch, lr=args.lr, run_dir=run_dir,
                      resume=args.resume, overwrite=args.overwrite, progress=args.progress, x_test=data.x_test,
                      y_test=data.y_test, out=out, tracker=tracker, teacher=teacher, x_val=data.x_val,
                      y_val=data.y_val, measure_input=init is None,
                      split_state=None if init is None else split_state(args.init),  # the source's held-out set
                      plots=not args.no_plots)
    if args.progress == "none":  # the progress output ends with this line otherwise
        out.write(final_line(history) + "\n")
    return 0


def _read_init(path: str | None, model) -> dict | None:
    """The arrays of run or model file ``path`` for ``--init``, checked against the spec's names and shapes.

    Every array is taken, batch-norm running statistics and input statistics included (the
    weights were learned with them, so they are not re-measured); the optimizer starts afresh.
    """
    if path is None:
        return None
    from ..checkpoint import check_arrays, load_model

    saved = load_model(path, what="--init run")
    return check_arrays(model.arrays, {f"param/{k}": v for k, v in saved.params.items()}, f"--init {saved.path}")


def _trackers(args: argparse.Namespace, net, run_dir, source):
    """dnnspec.tracking.Trackers for --tensorboard / --mlflow (imported only then), or None."""
    if args.tensorboard is None and args.mlflow is None:
        return None
    from ..tracking import Trackers

    return Trackers(net, tensorboard=args.tensorboard, mlflow=args.mlflow, run_dir=run_dir, data=str(source))


def _nothing():
    import contextlib

    return contextlib.nullcontext()
