"""``dnnspec predict MODEL.onnx INPUT...``: run an exported model with onnxruntime.

INPUT: ``.npy``, ``.npz`` (channels-last images are transposed when that is the only
reading that fits), ``.csv`` (a table model finds its columns by header name and drops
the label column, with a note), IDX files, image files, folders of images (recursively:
a class-folder tree works) and glob patterns (``'photos/*.jpg'``); several are read in
order. ``--limit N`` stops after N examples. Prints the top classes with their names and
probabilities (each image by its file name), or the outputs of a regression model, or
writes them with ``--out`` as CSV, JSON or ``.npy`` (all the probabilities). Models from
other tools work too: a fixed batch axis runs that many rows per call, integer inputs
take whole numbers; anything that does not fit is one line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import UsageError
from . import positive_int

OUT_SUFFIXES = (".csv", ".json", ".npy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="an exported model")
    p.add_argument("input", metavar="INPUT", nargs="+",
                   help=".npy, .npz, .csv, IDX (*-ubyte[.gz]) or image files, folders of images, glob patterns")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="predict the first N examples only")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime execution provider")
    p.add_argument("--batch", type=positive_int, default=1024,  # export.predictor.DEFAULT_BATCH (a test checks)
                   help="examples per onnxruntime call (default 1024; a model with a fixed batch axis uses its own)")
    p.add_argument("--top", type=positive_int, default=3, metavar="K", help="classes to show per example (default 3)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--out", metavar="FILE", help="write results to FILE.csv, FILE.json or FILE.npy instead")


def run(args: argparse.Namespace) -> int:
    from ..export.predictor import Predictor, read_inputs, top_k

    if args.out and not args.out.lower().endswith(OUT_SUFFIXES):
        raise UsageError(f"--out {args.out}: use a .csv, .json or .npy file name")
    if args.out and not Path(args.out).parent.is_dir():  # fail before the work, not after
        raise UsageError(f"cannot write {args.out}: the folder {Path(args.out).parent} does not exist; "
                         "create it or choose another path")
    pred = Predictor(args.model, provider=args.provider, threads=args.threads)
    inputs = read_inputs(args.input, pred, args.limit)
    for note in inputs.notes:
        print(f"dnnspec: note: {note}", file=sys.stderr)
    source = args.input[0] if len(args.input) == 1 else f"{len(args.input)} inputs"
    out = np.concatenate([pred.predict(x, batch=args.batch, source=source) for x in inputs.parts])
    names = inputs.names if inputs.files else None
    if pred.is_classifier:
        out = pred.class_probabilities(out)
        idx, probs = top_k(out, args.top)
        rows = [[(int(i), pred.name(int(i)), float(p)) for i, p in zip(ri, rp)] for ri, rp in zip(idx, probs)]
    else:
        rows = None
    if args.out:
        _write(Path(args.out), out, rows, names)
        print(f"wrote {len(out)} predictions to {args.out}")
    else:
        _print(out, rows, names)
    return 0


def _print(out: np.ndarray, rows: list | None, names: list[str] | None = None) -> None:
    for n in range(len(out)):
        label = names[n] if names else str(n)
        if rows is None:
            print(f"{label}: " + " ".join(f"{v:.6g}" for v in out[n].reshape(-1)))
        else:
            print(f"{label}: " + "  ".join(f"{name} {p:.4f}" for _, name, p in rows[n]))


def _write(path: Path, out: np.ndarray, rows: list | None, names: list[str] | None = None) -> None:
    from ..export.onnx_export import write_atomic

    suffix = path.suffix.lower()
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, out)
        data = buf.getvalue()
    elif suffix == ".json":
        records = ([{"row": n, **({"file": names[n]} if names else {}),
                     "top": [{"class": i, "name": name, "probability": p} for i, name, p in r]}
                    for n, r in enumerate(rows)] if rows is not None else out.tolist())
        data = (json.dumps(records, indent=1) + "\n").encode()
    else:
        data = _csv(out, rows, names).encode()
    write_atomic(path, data)


def _csv(out: np.ndarray, rows: list | None, names: list[str] | None = None) -> str:
    file_head = "file," if names else ""

    def file_cell(n: int) -> str:
        return _quote(names[n]) + "," if names else ""

    if rows is None:
        flat = out.reshape(len(out), -1)
        lines = ["row," + file_head + ",".join(f"output_{j}" for j in range(flat.shape[1]))]
        lines += [f"{n}," + file_cell(n) + ",".join(f"{v:.8g}" for v in r) for n, r in enumerate(flat)]
    else:
        k = len(rows[0]) if rows else 0
        lines = ["row," + file_head + ",".join(f"class_{j},name_{j},probability_{j}" for j in range(1, k + 1))]
        lines += [f"{n}," + file_cell(n) + ",".join(f"{i},{_quote(name)},{p:.8g}" for i, name, p in r)
                  for n, r in enumerate(rows)]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
