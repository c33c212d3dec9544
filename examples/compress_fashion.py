"""Compress the Fashion-MNIST CNN: teacher -> pruned -> distilled -> int8, each stage a dnnspec command.

    python examples/compress_fashion.py [--work DIR] [--teacher-run RUN] [--epochs 15] [--keep auto]
                                        [--finetune 10] [--student-init pruned|scratch] [--student-epochs N]
                                        [--student-lr X] [--temperature 4] [--weight 0.9] [--rounds 7]
                                        [--out FILE.md]
    python examples/compress_fashion.py --quick      # 1 epoch per stage on 1,200 images: checks the pipeline

Stages, each run as ``python -m dnnspec ...`` in the work folder (default: a temporary one):

1. **teacher**: ``dnnspec train specs/fashion_cnn.dnn`` (``--epochs``, default the spec's 15),
   exported twice: ``teacher.onnx`` (measured) and ``teacher_logits.onnx`` (``--logits``, for
   distillation). ``--teacher-run RUN`` reuses a trained run instead (it is only exported).
2. **pruned**: ``dnnspec prune TEACHER --keep K --finetune E`` (E = ``--finetune``, default 10).
   ``--keep`` defaults to the largest K on a 0.01 grid whose pruned network has at most a third
   of the teacher's FLOPs, found by pruning the teacher's weights in memory (dnnspec.prune.count
   counts FLOPs as ``dnnspec check`` does).
3. **distilled**: the teacher's soft targets (``--temperature T``, ``--weight A``) taught to the pruned
   network: ``dnnspec train PRUNED/spec.dnn --teacher teacher_logits.onnx``, with ``--init PRUNED``
   for ``--student-init pruned`` (default: a fine-tune of the pruned weights, ``--student-epochs``
   5 and ``--student-lr`` 3e-4 by default), or from a fresh start for ``--student-init scratch``
   (the spec's 15 epochs and learning rate by default).
4. **int8**: ``dnnspec export DISTILLED --quantize int8-static`` (QDQ, calibrated on training data).

Then every exported file is measured here: test accuracy on the test split through onnxruntime
(dnnspec.evaluation.evaluate, what ``dnnspec evaluate FILE`` runs), file size, parameters and
FLOPs per example of its run's spec (dnnspec.prune.count), and onnxruntime latency (1 thread) at
batch 1 and batch 1024: the four models take turns in each of ``--rounds`` rounds (the order
reversed every other round, dnnspec.export.quantize.alternating_rounds) and each cell is the
median over the rounds. The markdown table (``--out FILE.md`` writes it too) ends with the
check of issue 12: the student (distilled, and int8) keeps at least 99 % of the teacher's test
accuracy at no more than a third of its FLOPs, computed from the measured numbers.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnnspec import checkpoint, frontend, prune
from dnnspec.evaluation import evaluate, open_model, resolve_data
from dnnspec.export.quantize import alternating_rounds, session_runner

SPEC = Path(__file__).resolve().parent.parent / "specs" / "fashion_cnn.dnn"
MIN_ACCURACY = 0.99  # of the teacher's test accuracy
MAX_FLOPS = 1 / 3  # of the teacher's FLOPs per example
BATCHES = {1: 200, 1024: 2}  # calls per turn at each batch size
QUICK = {"train": 1200, "test": 500, "rounds": 2, "batches": {1: 10, 1024: 1}}


@dataclass
class Stage:
    """One row: its exported model, the run whose spec it measures, the commands that made it."""

    name: str
    onnx: Path
    run: Path
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- running the commands --------------------------------------------------------------------


def dnnspec_cmd(stage: Stage, *args: str | Path) -> None:
    """Run ``dnnspec ARGS`` (this interpreter's dnnspec) and record it in ``stage``; exit when it fails."""
    argv = [str(a) for a in args]
    shown = "dnnspec " + shlex.join(_relative(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "dnnspec", *argv]).returncode
    stage.seconds += time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"stage {stage.name} failed (exit {rc}): {shown}")
    stage.commands.append(shown)


def _relative(arg: str | Path) -> str:
    """A path under the current folder as a relative one (the commands as a user would type them)."""
    if isinstance(arg, Path) and arg.resolve().is_relative_to(Path.cwd()):
        return str(arg.resolve().relative_to(Path.cwd()))
    return str(arg)


def choose_keep(run: Path, max_flops: float = MAX_FLOPS) -> float:
    """The largest keep K in {1.00, 0.99, ..., 0.01} whose pruned network has FLOPs <= max_flops * the run's.

    FLOPs shrink with K (conv2's are ~K^2 of it), but ``round(K * width)`` makes the steps uneven,
    so every K is tried on the real weights (pruning in memory is a slice of each array).
    """
    saved = checkpoint.load_model(run)
    flops = prune.count(saved.model)[1]
    for keep in np.round(np.arange(100, 0, -1) / 100, 2):
        if prune.count(prune.prune(saved.model, saved.params, float(keep)).model)[1] <= max_flops * flops:
            return float(keep)
    raise SystemExit(f"{run}: no keep fraction brings its FLOPs to {max_flops:.1%}; prune by hand with --keep")


def subset(path: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of Fashion-MNIST as a .npz data file (--quick)."""
    from dnnspec.data import load_data

    ds = load_data("fashion-mnist", frontend.load(SPEC))
    np.savez(path, x=ds.x_train[:n_train], y=ds.y_train[:n_train], x_test=ds.x_test[:n_test],
             y_test=ds.y_test[:n_test])
    return path


def run_stages(args: argparse.Namespace, work: Path, data: list[str]) -> list[Stage]:
    """The four stages, each by its dnnspec commands (``data``: ``["--data", FILE]`` or nothing)."""
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    teacher = Stage("teacher", work / "teacher.onnx", Path(args.teacher_run or work / "teacher"))
    if args.teacher_run:
        teacher.commands.append(f"(reused run {args.teacher_run})")
    else:
        dnnspec_cmd(teacher, "train", SPEC, "--out", teacher.run, "--overwrite", *epochs, *data)
    dnnspec_cmd(teacher, "export", teacher.run, "-o", teacher.onnx)
    dnnspec_cmd(teacher, "export", teacher.run, "--logits", "-o", work / "teacher_logits.onnx")
    keep = args.keep if args.keep is not None else choose_keep(teacher.run)
    pruned = Stage("pruned", work / "pruned.onnx", work / "pruned")
    dnnspec_cmd(pruned, "prune", teacher.run, "--keep", f"{keep:g}", "-o", pruned.run, "--finetune",
                str(args.finetune), "--overwrite", *data)
    dnnspec_cmd(pruned, "export", pruned.run, "-o", pruned.onnx)
    student = student_stage(args, work, pruned.run, data)
    int8 = Stage("int8", work / "distilled_int8.onnx", student.run)
    dnnspec_cmd(int8, "export", student.run, "--quantize", "int8-static", "-o", int8.onnx, *data)
    return [teacher, pruned, student, int8]


def student_stage(args: argparse.Namespace, work: Path, pruned: Path, data: list[str]) -> Stage:
    """The distilled run (from the pruned weights, or the pruned spec from scratch), exported."""
    student = Stage("distilled", work / "distilled.onnx", work / "distilled")
    teacher = work / "teacher_logits.onnx"
    opts = ["--epochs", str(args.student_epochs)] if args.student_epochs else []
    opts += ["--lr", f"{args.student_lr:g}"] if args.student_lr else []
    if args.student_init == "pruned":  # a fine-tune of the pruned weights (and their input statistics)
        opts += ["--init", pruned]
    dnnspec_cmd(student, "train", pruned / "spec.dnn", "--out", student.run, "--overwrite", *opts,
                "--teacher", teacher, "--temperature", f"{args.temperature:g}", "--distill-weight",
                f"{args.weight:g}", *data)
    dnnspec_cmd(student, "export", student.run, "-o", student.onnx)
    return student


# --- measuring ---------------------------------------------------------------------------------


def latencies(stages: list[Stage], x: np.ndarray, rounds: int, batches: dict[int, int]) -> dict[int, dict[str, float]]:
    """{batch: {stage: median seconds per call}}: onnxruntime CPU, 1 thread, the models in alternating rounds.

    x: raw test inputs ``(N, *input_shape)``, repeated to fill a batch larger than N.
    """
    out = {}
    for batch, calls in batches.items():
        xb = np.take(x, np.arange(batch) % len(x), axis=0).astype(np.float32)
        fns = {s.name: session_runner(s.onnx.read_bytes(), xb, threads=1) for s in stages}
        t = alternating_rounds(fns, rounds, calls, warmup=max(1, calls // 20))
        out[batch] = {name: statistics.median(times) for name, times in t.items()}
    return out


def measure(stages: list[Stage], data: str | None, rounds: int, batches: dict[int, int]) -> list[dict]:
    """One dict per stage: accuracy (test split, onnxruntime), bytes, params, flops, latency per batch size."""
    rows = []
    x_test = None
    for s in stages:
        report = evaluate(s.onnx, data)
        params, flops = prune.count(checkpoint.load_model(s.run).model)
        rows.append({"stage": s.name, "accuracy": float(report.metrics["accuracy"]), "examples": report.examples,
                     "bytes": s.onnx.stat().st_size, "params": params, "flops": flops, "commands": s.commands,
                     "seconds": s.seconds})
        if x_test is None:  # the same test inputs evaluate read: latency does not depend on their values
            x_test = resolve_data(open_model(s.onnx), data)[0]
    times = latencies(stages, x_test, rounds, batches)
    for row in rows:
        row["latency"] = {batch: t[row["stage"]] for batch, t in times.items()}
    return rows


# --- the table and the check ---------------------------------------------------------------------


def meets(teacher_acc: float, student_acc: float, flops_ratio: float, min_accuracy: float = MIN_ACCURACY,
          max_flops: float = MAX_FLOPS) -> bool:
    """Issue 12's target: student accuracy >= min_accuracy * teacher's, at FLOPs <= max_flops * teacher's."""
    return student_acc >= min_accuracy * teacher_acc and flops_ratio <= max_flops


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def table(rows: list[dict]) -> str:
    """The markdown table: one row per stage, numbers relative to the teacher (the first row) in brackets."""
    t = rows[0]
    lines = ["| stage | test accuracy | ONNX file | parameters | FLOPs/example | latency batch 1 | "
             "latency batch 1024 | command |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cmd = "<br>".join(f"`{c}`" for c in r["commands"])
        lines.append(f"| {r['stage']} | {r['accuracy']:.4f} ({r['accuracy'] / t['accuracy']:.1%}) | "
                     f"{_size(r['bytes'])} | {r['params']:,} | {r['flops']:,} ({r['flops'] / t['flops']:.1%}) | "
                     f"{_time(r['latency'][1])} | {_time(r['latency'][1024])} | {cmd} |")
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
    """One line per student row (distilled, int8): the target and whether the measured numbers meet it."""
    t = rows[0]
    out = []
    for r in rows:
        if r["stage"] not in ("distilled", "int8"):
            continue
        ratio = r["flops"] / t["flops"]
        ok = meets(t["accuracy"], r["accuracy"], ratio)
        out.append(f"- {r['stage']}: {r['accuracy'] / t['accuracy']:.2%} of the teacher's accuracy "
                   f"({r['accuracy']:.4f} / {t['accuracy']:.4f}, needs >= {MIN_ACCURACY:.0%}) at {ratio:.1%} of "
                   f"its FLOPs (needs <= {MAX_FLOPS:.1%}): **{'met' if ok else 'not met'}**")
    return out


def report(rows: list[dict], rounds: int, wall: float) -> str:
    n = rows[0]["examples"]
    head = (f"Fashion-MNIST CNN compressed: test accuracy on {n:,} test images (onnxruntime), latency = median "
            f"of {rounds} alternating rounds, onnxruntime CPU, 1 thread; total wall time {wall / 60:.1f} min.")
    return "\n".join([head, "", table(rows), "", "Target (issue 12): the student keeps >= 99 % of the teacher's "
                      "accuracy at <= 1/3 of its FLOPs.", *checks(rows), ""])


def _count(text: str, least: int = 1) -> int:
    """An argparse type: a whole number >= ``least``."""
    try:
        n = int(text)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, found {text!r}")
    return n


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}")
    return v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the student's defaults filled in by --student-init (and --quick's small sizes)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="folder for the runs and .onnx files (default: a temporary folder)")
    p.add_argument("--teacher-run", metavar="RUN", help="a trained run of specs/fashion_cnn.dnn to reuse")
    p.add_argument("--epochs", type=_count, help="teacher epochs (default: the spec's 15)")
    p.add_argument("--keep", type=_positive, help="prune keep fraction (default: the largest with <= 1/3 FLOPs)")
    p.add_argument("--finetune", type=lambda t: _count(t, 0), default=10,
                   help="fine-tuning epochs after pruning (default 10)")
    p.add_argument("--student-init", choices=("pruned", "scratch"), default="pruned",
                   help="distil into the pruned weights (default: train --init PRUNED) or train the pruned spec "
                        "from scratch")
    p.add_argument("--student-epochs", type=_count, help="distillation epochs (default 5 from pruned, spec's 15 "
                                                         "from scratch)")
    p.add_argument("--student-lr", type=_positive, help="distillation learning rate (default 3e-4 from pruned, "
                                                        "the spec's from scratch)")
    p.add_argument("--temperature", type=_positive, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--weight", type=float, default=0.9, help="distillation weight of the soft targets (default 0.9)")
    p.add_argument("--rounds", type=_count, default=7, help="latency rounds (default 7)")
    p.add_argument("--out", metavar="FILE.md", help="also write the table here")
    p.add_argument("--quick", action="store_true", help="1 epoch per stage on 1,200 images (checks the pipeline)")
    args = p.parse_args(argv)
    if args.teacher_run and not Path(args.teacher_run).exists():
        p.error(f"--teacher-run {args.teacher_run}: no such run folder; train one or drop --teacher-run")
    if args.student_init == "pruned":
        args.student_epochs = args.student_epochs or 5
        args.student_lr = args.student_lr or 3e-4
    if args.quick:
        args.epochs, args.finetune, args.student_epochs = 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    from dnnspec.errors import DnnspecError

    args = parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnnspec-compress-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = str(subset(work / "subset.npz", QUICK["train"], QUICK["test"])) if args.quick else None
        rounds = QUICK["rounds"] if args.quick else args.rounds
        try:
            stages = run_stages(args, work, ["--data", data] if data else [])
            rows = measure(stages, data, rounds, QUICK["batches"] if args.quick else BATCHES)
        except DnnspecError as e:  # from the stages run in this process (the distillation, the measures)
            raise SystemExit(f"error: {e}") from None
    text = report(rows, rounds, time.perf_counter() - t0)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return rows


if __name__ == "__main__":
    main()
