"""``dnnspec prune RUN --keep FRACTION -o NEW_RUN [--finetune EPOCHS]``: a smaller network from a trained one.

Removes the units (dense) and filters (conv2d) with the smallest scores (dnnspec/prune.py),
writes NEW_RUN/spec.dnn (the spec with its new widths) and NEW_RUN/model.npz (the pruned
weights), or with ``--finetune EPOCHS`` trains the pruned network on the spec's data into
NEW_RUN as ``dnnspec train`` would (checkpoint.npz, best.npz, history.csv). ``dnnspec
export NEW_RUN`` and ``dnnspec evaluate NEW_RUN`` read either. Prints one line per fact:
parameters, FLOPs, test accuracy before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v <= 1.0:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] (0.5 keeps half of each layer's units), "
                                         f"found {text!r}")
    return v


def _epochs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of epochs >= 0, found {text!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder of 'dnnspec train' (or a .npz model or checkpoint)")
    p.add_argument("--keep", type=_fraction, required=True, metavar="FRACTION",
                   help="fraction of each prunable layer's units and filters to keep, in (0, 1]")
    p.add_argument("-o", "--out", required=True, metavar="NEW_RUN", help="the run folder to write")
    p.add_argument("--finetune", type=_epochs, default=0, metavar="EPOCHS",
                   help="train the pruned network this many epochs on the spec's data (default 0: no training)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in NEW_RUN")
    p.add_argument("--data", metavar="SOURCE", help="data as 'dnnspec train --data' takes it (default: the spec's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with downloaded data sets (e.g. Fashion-MNIST)")
    p.add_argument("--no-eval", action="store_true", help="do not measure test accuracy before and after")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="fine-tuning progress output (as 'dnnspec train')")


def _check_out(run: Path, out: Path, overwrite: bool) -> None:
    """UsageError when NEW_RUN is RUN itself, a file, or a folder with a run in it (unless --overwrite)."""
    from ..checkpoint import RUN_FILES as MODEL_FILES
    from ..history import RUN_FILES

    if out.exists() and run.exists() and out.resolve() == run.resolve():
        raise UsageError(f"{out}: -o names the run being pruned; give a new folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; give a new run folder with -o")
    held = [n for n in (*RUN_FILES, *MODEL_FILES) if (out / n).exists()]
    if held and not overwrite:
        raise UsageError(f"{out}: already holds a run ({held[0]}); pass --overwrite to replace it or choose "
                         f"another -o")


def _clear(out: Path) -> None:
    from ..checkpoint import RUN_FILES as MODEL_FILES
    from ..engine.trainer import clear_run

    clear_run(out)
    for name in MODEL_FILES:
        (out / name).unlink(missing_ok=True)


def _accuracy(net, data: str | None, data_dir: str | None) -> float | None:
    """Test accuracy of ``net`` (dnnspec.evaluation), None when the spec names no data and --data is absent."""
    from ..evaluation import evaluate

    if data is None and not net.model.data:
        return None
    report = evaluate(net, data, data_dir=data_dir)
    return report.metrics.get("accuracy")


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint, prune
    from ..api import load
    from ..dataschema import attach, from_meta
    from ..engine.net import Net

    src, out = Path(args.run), Path(args.out)
    if not src.exists():
        raise UsageError(f"{src}: no such run folder or model; give a run folder of 'dnnspec train'")
    _check_out(src, out, args.overwrite)
    saved = checkpoint.load_model(src)  # a run folder: its best weights
    pruned = prune.prune(saved.model, saved.params, args.keep)
    model = prune.reparse(pruned.model)
    schema = from_meta(saved.meta)
    net = attach(Net(model, dtype=saved.dtype), schema)
    checkpoint.restore_params(net.params, pruned.params, str(saved.path), prefix="")
    w = sys.stdout.write
    (p0, f0), (p1, f1) = prune.count(saved.model), prune.count(model)
    w(f"pruned {saved.path}: kept {args.keep:g} of the units of {len(pruned.kept)} layer(s) "
      f"({', '.join(pruned.kept) or 'none could lose any'})\n")
    w(f"parameters: {p0:,} -> {p1:,} ({p1 / max(p0, 1):.1%})\n")
    w(f"FLOPs/example: {f0:,} -> {f1:,} ({f1 / max(f0, 1):.1%})\n")
    if out.exists():
        _clear(out)
    tuned = None
    if args.finetune:
        tuned = _finetune(net, args, out)
    else:
        checkpoint.save_net(net, out / "model.npz")
        checkpoint.atomic_write_text(out / "spec.dnn", model.source)
    if not args.no_eval:
        before = _accuracy(load(src), args.data, args.data_dir)
        after = tuned if tuned is not None else _accuracy(net, args.data, args.data_dir)
        if before is None:
            w("test accuracy: not measured (the spec names no data; pass --data)\n")
        else:
            w(f"test accuracy before: {before:.4f}\n")
            w(f"test accuracy after{' fine-tuning' if args.finetune else ' (no fine-tuning)'}: {after:.4f}\n")
    w(f"wrote {out} (export it with 'dnnspec export {out}')\n")
    return 0


def _finetune(net, args: argparse.Namespace, out: Path) -> float | None:
    """Train ``net`` (the pruned weights) for --finetune epochs into ``out``, with the trainer of 'dnnspec train';
    the test accuracy of the result (also in ``out/metrics.json``), None without a test split."""
    from .. import checkpoint
    from ..data import load_data
    from ..engine.trainer import fit

    data = load_data(args.data, net.model, data_dir=args.data_dir)
    # the pruned weights were learned on the original input statistics: keep them rather than re-measure;
    # validate on the original run's held-out examples
    history = fit(net, data.x_train, data.y_train, epochs=args.finetune, run_dir=out, overwrite=True,
                  measure_input=False, split_state=checkpoint.split_state(args.run),
                  progress=args.progress, x_val=data.x_val, y_val=data.y_val, x_test=data.x_test, y_test=data.y_test,
                  out=sys.stdout)
    return (history.test or {}).get("accuracy")
