"""``dnnspec export RUN_DIR|CHECKPOINT``: write a trained network as an ONNX model.

Options: ``-o`` output file (default ``RUN_DIR/model.onnx``, or the checkpoint's name
with ``.onnx``), ``--opset``, ``--no-fold`` (keep BatchNormalization nodes), ``--logits``
(a second output: the input of a final softmax/sigmoid), ``--quantize int8`` (dynamic
int8 weights, written as asked; prints both sizes, saying so when int8 is the larger, and
the test accuracy before and after when the run's data has a test split), ``--triton
REPO_DIR`` (a Triton model repository as well).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="a run folder of 'dnnspec train', or a .npz file")
    p.add_argument("-o", "--output", metavar="MODEL.onnx", help="output file (default: RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the newest onnxruntime supports)")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="keep batch norm as BatchNormalization nodes instead of folding it into Gemm/Conv")
    p.add_argument("--logits", action="store_true",
                   help="add the input of the final softmax/sigmoid as a second output 'logits'")
    p.add_argument("--quantize", choices=("int8",), help="store weights as int8 (dynamic quantization)")
    p.add_argument("--data", metavar="SOURCE", help="data for the accuracy check of --quantize (default: the spec's)")
    p.add_argument("--triton", metavar="REPO_DIR", help="also write a Triton model repository here")


def default_output(source: Path) -> Path:
    return source / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import check_opset, to_onnx, write_atomic
    from ..export.runs import load_source

    check_opset(args.opset)
    src = load_source(args.source)
    out = Path(args.output) if args.output else default_output(Path(args.source))
    if not out.parent.is_dir():  # fail before the work, not after
        raise UsageError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another -o")
    model = src.net.model
    proto = to_onnx(model, src.net.params, opset=args.opset, fold=args.fold, logits_output=args.logits,
                    metadata=src.summary, source=str(src.path))
    data = proto.SerializeToString()
    nodes = len(proto.graph.node)
    if args.quantize:
        import onnx

        data = _quantize(data, model, args.data, out)
        nodes = len(onnx.load_model_from_string(data).graph.node)  # the file written, not the float graph
    write_atomic(out, data)
    print(f"wrote {out} ({_size(len(data))}, opset {proto.opset_import[0].version}, {nodes} nodes, from {src.path})")
    if args.triton:
        from ..export.triton import write_repository

        outputs = [(o.name, tuple(d.dim_value for d in o.type.tensor_type.shape.dim[1:])) for o in proto.graph.output]
        folder = write_repository(args.triton, model.name, data, [("input", model.input.shape)], outputs)
        print(f"wrote Triton model {folder} (config.pbtxt, 1/model.onnx)")
    return 0


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


def _quantize(data: bytes, model, data_source: str | None, out: Path) -> bytes:
    """int8 weights; print the sizes and, when there is a test split, the accuracy change."""
    from ..export.quantize import accuracy, quantize_int8

    small = quantize_int8(data)
    print(f"{out}: {_size(len(data))} float32 -> {_size(len(small))} int8 ({_change(len(data), len(small))})")
    test = _test_split(model, data_source)
    if test is None:
        print("no test split in the run's data: accuracy change not measured (pass --data SOURCE)")
        return small
    before, after = accuracy(data, *test), accuracy(small, *test)
    print(f"test accuracy {before:.4f} float32 -> {after:.4f} int8 ({100 * (after - before):+.2f} points, "
          f"{len(test[1])} examples)")
    return small


def _test_split(model, data_source: str | None):
    """(x_test, y_test) of the run's data for a classifier, or None."""
    from ..data import load_data
    from ..errors import DataError

    if model.task.kind != "classification" or not (data_source or model.data):
        return None
    try:
        ds = load_data(data_source, model, batch=1)  # only the test split matters here
    except DataError as e:
        print(f"cannot load the data for the accuracy check: {e}")
        return None
    return (ds.x_test, ds.y_test) if ds.x_test is not None and ds.y_test is not None else None
