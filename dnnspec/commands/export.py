"""``dnnspec export RUN_DIR|CHECKPOINT``: write a trained network as an ONNX model.

Options: ``-o`` output file (default ``RUN_DIR/model.onnx``, or the checkpoint's name
with ``.onnx``), ``--opset``, ``--no-fold`` (keep BatchNormalization nodes), ``--logits``
(a second output: the input of a final softmax/sigmoid), ``--quantize int8`` (dynamic
int8 weights of the dense layers) or ``--quantize int8-static`` (QDQ, every Conv/Gemm/MatMul
in int8, calibrated on ``--calibration N`` seeded training examples), each written as asked,
printing both sizes (saying so when int8 is the larger), the test accuracy before and
after when the run's data has a test split, and onnxruntime's latency at batch 1 and 1024;
``--triton REPO_DIR`` (a Triton model repository as well).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..export.quantize import MODES

LATENCY_ROUNDS = 5  # float32 and int8 take turns; the ratio is taken within each round
LATENCY_BUDGET_S = 2.0  # no new round after this long, so that a large model's export stays quick


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="a run folder of 'dnnspec train', or a .npz file")
    p.add_argument("-o", "--output", metavar="MODEL.onnx", help="output file (default: RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the newest onnxruntime supports)")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="keep batch norm as BatchNormalization nodes instead of folding it into Gemm/Conv")
    p.add_argument("--logits", action="store_true",
                   help="add the input of the final softmax/sigmoid as a second output 'logits'")
    p.add_argument("--quantize", choices=MODES,
                   help="int8: dense layers' weights as int8 (dynamic); int8-static: convolutions and dense layers "
                        "in int8 (QDQ), calibrated on training data")
    p.add_argument("--calibration", type=int, metavar="N",
                   help="int8-static: training examples to calibrate on, a seeded sample (default 512)")
    p.add_argument("--data", metavar="SOURCE",
                   help="data for --quantize: calibration and the accuracy check (default: the spec's)")
    p.add_argument("--triton", metavar="REPO_DIR", help="also write a Triton model repository here")


def default_output(source: Path) -> Path:
    return source / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import to_onnx, write_atomic
    from ..export.runs import load_source
    from ..export.tabular import table_schema

    opset = _opset(args)
    src = load_source(args.source)
    if (args.quantize or args.triton) and table_schema(src.summary) is not None:  # one input per column
        raise UsageError(f"{args.source}: a table model with text columns takes one input per column, which "
                         f"--quantize and --triton do not handle yet; export it without them")
    out = Path(args.output) if args.output else default_output(Path(args.source))
    if not out.parent.is_dir():  # fail before the work, not after
        raise UsageError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another -o")
    model = src.net.model
    proto = to_onnx(model, src.net.params, opset=opset, fold=args.fold, logits_output=args.logits,
                    metadata=src.summary, source=str(src.path))
    data = proto.SerializeToString()
    written = proto
    if args.quantize:
        import onnx

        data = _quantize(data, model, args, out)
        written = onnx.load_model_from_string(data)  # the file written, not the float graph
    write_atomic(out, data)
    version = next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx"))
    print(f"wrote {out} ({_size(len(data))}, opset {version}, {len(written.graph.node)} nodes, from {src.path})")
    if args.triton:
        from ..export.triton import write_repository

        outputs = [(o.name, tuple(d.dim_value for d in o.type.tensor_type.shape.dim[1:])) for o in proto.graph.output]
        folder = write_repository(args.triton, model.name, data, [("input", model.input.shape)], outputs)
        print(f"wrote Triton model {folder} (config.pbtxt, 1/model.onnx)")
    return 0


def _opset(args: argparse.Namespace) -> int:
    """The export opset, checked with the quantize options before any work is done.

    Static int8 is written at opset 27 or lower (onnxruntime has no QuantizeLinear-28 kernel).
    """
    from ..export.onnx_export import check_opset
    from ..export.quantize import static_opset

    opset = check_opset(args.opset)
    calibration = getattr(args, "calibration", None)
    if calibration is not None and args.quantize != "int8-static":
        raise UsageError(f"--calibration {calibration} applies to --quantize int8-static only "
                         "(dynamic int8 needs no calibration data); add --quantize int8-static or drop --calibration")
    if calibration is not None and calibration < 1:
        raise UsageError(f"--calibration {calibration}: give the number of training examples to calibrate on "
                         "(1 or more; default 512)")
    return static_opset(args.opset) if args.quantize == "int8-static" else opset


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _change(before: int, after: int) -> str:
    """How the size changed, in words that stay true for a model that int8 makes larger."""
    if after * 1.1 <= before:
        return f"{before / after:.1f}x smaller"
    if after < before:
        return f"{100 * (before - after) / before:.0f}% smaller"
    return (f"{100 * (after - before) / before:.0f}% larger: in a model this small the quantize nodes, scales "
            f"and zero points outweigh what int8 weights save; it is written as asked, drop --quantize for float32")


def _quantize(data: bytes, model, args: argparse.Namespace, out: Path) -> bytes:
    """The int8 model; print the sizes, the test accuracy change (when there is a test split) and the latency."""
    from ..export.quantize import quantize_int8, with_note

    static = args.quantize == "int8-static"
    ds = _dataset(model, args.data, static)
    if static:
        small, note = _calibrated(data, model, ds, args.calibration)
        if not args.fold and any(layer.kind == "batchnorm" for layer in model.layers):
            print("note: --no-fold keeps each batch norm a float32 BatchNormalization between int8 layers, and the "
                  "conversions cost more than int8 saves (2.5x the float32 time for the Fashion-MNIST CNN); "
                  "drop --no-fold to fold it into the convolutions")
    else:
        small, note = quantize_int8(data), "int8 dynamic: int8 weights of the dense layers (Gemm/MatMul)"
    small = with_note(small, note)
    label = args.quantize
    print(f"{out}: {_size(len(data))} float32 -> {_size(len(small))} {label} ({_change(len(data), len(small))})")
    _report_accuracy(data, small, model, ds, label)
    _report_latency(data, small, model, ds, label)
    return small


def _calibrated(data: bytes, model, ds, n: int | None) -> tuple[bytes, str]:
    """Static int8, calibrated on a seeded sample of the training split; and its metadata note."""
    from ..export.quantize import DEFAULT_CALIBRATION, calibration_sample, quantize_static_int8

    seed = int(model.train.get("seed", 0) or 0)
    x = calibration_sample(ds.x_train, DEFAULT_CALIBRATION if n is None else n, seed)
    whole = " (the whole training split)" if len(x) == len(ds.x_train) else ""
    sample = f"{len(x)} of {len(ds.x_train)} training examples{whole}, seed {seed}, from {ds.path or ds.name}"
    print(f"calibrating on {sample}")
    return quantize_static_int8(data, x), f"int8 static (QDQ, MinMax calibration on {sample})"


def _dataset(model, source: str | None, required: bool):
    """The run's data (``--data`` or the spec's), or None; ``required`` (static int8) raises instead of None."""
    from ..data import load_data
    from ..errors import DataError

    if not (source or model.data):
        if required:
            raise UsageError(f"{model.path}: --quantize int8-static calibrates on training data, but the spec names "
                             "no data source; pass --data SOURCE (the data the run was trained on)")
        return None
    if not required and model.task.kind != "classification":
        return None  # dynamic int8 only reads data for the accuracy check
    try:
        return load_data(source, model, batch=1)
    except DataError as e:
        if required:
            raise DataError(f"--quantize int8-static cannot load its calibration data: {e}") from None
        print(f"cannot load the data for the accuracy check: {e}")
        return None


def _report_accuracy(data: bytes, small: bytes, model, ds, label: str) -> None:
    """Test accuracy of both models, when the model is a classifier and the data has a test split."""
    from ..export.quantize import accuracy

    if model.task.kind != "classification":
        return
    if ds is None or ds.x_test is None or ds.y_test is None:
        print("no test split in the run's data: accuracy change not measured (pass --data SOURCE)")
        return
    before, after = accuracy(data, ds.x_test, ds.y_test), accuracy(small, ds.x_test, ds.y_test)
    print(f"test accuracy {before:.4f} float32 -> {after:.4f} {label} ({100 * (after - before):+.2f} points, "
          f"{len(ds.y_test)} examples)")


def _report_latency(data: bytes, small: bytes, model, ds, label: str) -> None:
    """onnxruntime CPU time per call of both models at batch 1 and 1024, in alternating rounds.

    One intra-op thread: on a machine whose other cores are busy, a two-thread run waits
    for its slower half and the ratio says more about the load than about int8
    (bench/bench_quantize.py measures more threads, longer).
    """
    import numpy as np

    from ..export.quantize import compare_latency

    if ds is not None:
        x = ds.x_test if ds.x_test is not None else ds.x_train
    else:  # time hardly depends on the values: seeded inputs of the model's shape
        x = np.random.default_rng(0).normal(size=(64, *model.input.shape))
    for batch, calls in ((1, 50), (1024, 1)):
        xb = np.take(x, np.arange(batch) % len(x), axis=0).astype(np.float32)
        t = compare_latency(data, small, xb, rounds=LATENCY_ROUNDS, calls=calls, threads=1, budget_s=LATENCY_BUDGET_S)
        print(f"latency at batch {batch}: float32 {_time(t['float32'])}, {label} {_time(t['int8'])} per call "
              f"({t['ratio']:.2f}x the time: median ratio of {t['rounds']} alternating rounds, onnxruntime CPU, "
              "1 thread)")


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"
