"""Run an exported ONNX model with onnxruntime: ``dnnspec.Predictor``.

    p = Predictor("model.onnx")            # provider="cpu" | "cuda", threads=None
    probs = p.predict(x)                   # x raw, (N, *input_shape) or one example
    idx, prob = p.top(x, k=3)              # (N, k) class ids and probabilities
    p.class_names, p.input_shape           # read from the model's metadata / input

Inputs are checked before they reach onnxruntime: a wrong shape, feature count or
dtype is a :class:`~dnnspec.errors.DataError` naming the shape the model expects.
Images stored channels-last ``(N, H, W, C)`` are moved to the model's ``(N, C, H, W)``
when that is the only reading that fits. A model trained on a table with text columns
(its ``data_schema`` metadata; dnnspec.export.tabular) takes the raw table: rows of cells
``(N, columns)`` or a mapping ``{column: values}``, fed as one input per column.
Values are cast to the model's input type when that loses nothing (whole floats to an
int64 input), a model with a fixed batch axis runs that many rows per call, and any
error onnxruntime still raises becomes one DataError line naming the model file.
:func:`load_inputs` reads ``.npy``, ``.npz``, ``.csv``, IDX and image files, checking
sizes (array headers, image dimensions) before decoding; :func:`read_inputs` reads
several files, folders and globs as ``dnnspec predict`` takes them.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dataschema import DataSchema, from_meta
from ..errors import CheckpointError, DataError, UsageError
from ..images import IMAGE_SUFFIXES
from ..shapes import fmt_shape

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: Rows per onnxruntime call when ``predict`` is not given a batch: what onnxruntime holds stays bounded
#: (10,000 images through fashion_resnet in one call took 1.70 GB and 1.13 s, in 256-row calls 0.18 GB and
#: 0.71 s), and ``dnnspec predict``'s default.
DEFAULT_BATCH = 1024
#: onnxruntime's input types that predict can feed, as NumPy dtypes.
ORT_DTYPES = {f"tensor({name})": np.dtype(dt) for name, dt in (
    ("float", np.float32), ("double", np.float64), ("float16", np.float16), ("bool", np.bool_),
    ("int8", np.int8), ("int16", np.int16), ("int32", np.int32), ("int64", np.int64),
    ("uint8", np.uint8), ("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64))}


def session_options(threads: int | None = None) -> Any:
    """Sequential execution, all graph optimisations, ``threads`` intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return opts


def providers_for(provider: str) -> list[str]:
    """onnxruntime providers for ``cpu`` or ``cuda``; for cuda, say what is missing if it cannot run."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider {provider!r}: choose cpu or cuda")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UsageError("--provider cuda needs onnxruntime-gpu, which is not installed (this onnxruntime offers "
                         f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu, or use cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def open_session(path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession, with clear errors for missing, corrupt or non-ONNX files."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such model file" + (" (it is a folder)" if path.is_dir() else ""))
    providers = providers_for(provider)
    try:
        sess = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a valid ONNX model (truncated or corrupt?): {first[:200]}") from None
    if provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise UsageError("--provider cuda: onnxruntime-gpu is installed but no usable CUDA GPU was found "
                         "(check the driver and CUDA libraries with nvidia-smi), or use --provider cpu")
    return sess


class Predictor:
    """An exported model ready to run: ``predict`` gives probabilities (or outputs), ``top`` the best classes."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.session = open_session(path, provider, threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        #: what the model learned from its data (class names, a table's columns, image resizing); None if unknown
        self.schema: DataSchema | None = from_meta(self.metadata)
        #: the table schema when the model takes the raw columns of a table (one input per column), else None
        self.table = self._table()
        if self.table is not None:
            self.input_name, self.input_dtype, self.fixed_batch = "", np.dtype(object), None
            self.input_shape: tuple[int, ...] = (len(self.table.columns),)
        else:
            inp = self._the_input()
            self.input_name = inp.name
            self.input_dtype = ORT_DTYPES[inp.type]
            #: rows per run when the model's batch axis is a fixed number, else None (any N)
            self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
            self.input_shape = tuple(int(d) if isinstance(d, int) else -1 for d in inp.shape[1:])
        self.class_names = self._class_names()

    def _table(self) -> DataSchema | None:
        schema = self.schema
        if schema is None or schema.kind != "table" or not schema.has_text:
            return None
        names = {i.name for i in self.session.get_inputs()}
        return schema if names == {c.name for c in schema.columns} else None

    @property
    def resize(self) -> str:
        """How the model's training images were resized (``fit``, ``crop``, ``pad``), or "" (they had its size)."""
        return self.schema.resize if self.schema is not None and self.schema.kind == "images" else ""

    def _the_input(self) -> Any:
        """The model's one input, which must be a numeric tensor with a batch axis (CheckpointError otherwise)."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise CheckpointError(f"{self.path}: predict runs models with one input; this one has {len(inputs)} "
                                  f"({names}) and is not a dnnspec table model (one input per column)")
        inp = inputs[0]
        if inp.type not in ORT_DTYPES:
            raise CheckpointError(f"{self.path}: input {inp.name!r} takes {inp.type}; predict feeds numeric tensors")
        if not inp.shape:
            raise CheckpointError(f"{self.path}: input {inp.name!r} is a scalar; predict needs a batch axis")
        return inp

    def _class_names(self) -> list[str]:
        try:
            names = json.loads(self.metadata.get("class_names", "[]"))
        except json.JSONDecodeError:
            names = []
        if not isinstance(names, list):  # another tool's metadata
            names = []
        if not names and self.output_names[0] == "probabilities":
            shape = self.session.get_outputs()[0].shape or [None]
            width = shape[-1]
            names = [str(i) for i in range(2 if width == 1 else int(width))] if isinstance(width, int) else []
        return [str(n) for n in names]

    @property
    def is_classifier(self) -> bool:
        return self.output_names[0] == "probabilities"

    def prepare(self, x: Any, source: str = "input") -> np.ndarray:
        """Raw examples -> ``(N, *input_shape)`` of the model's input type; DataError naming what it expects.

        A table model: the rows as given (object ``(N, columns)``), checked when they are fed.
        """
        if self.table is not None:
            return x if isinstance(x, Mapping) else np.asarray(x, dtype=object)
        return coerce_input(x, self.input_shape, source, self.input_dtype, str(self.path))

    def feeds(self, x: Any, source: str = "input") -> dict[str, np.ndarray]:
        """The session's inputs for raw examples ``x``: ``{input: array}``, or one ``(N, 1)`` array per table column."""
        if self.table is not None:
            from ..tables import onnx_feeds

            return onnx_feeds(x, self.table, source)
        return {self.input_name: self.prepare(x, source)}

    def predict(self, x: Any, batch: int | None = None, source: str = "input") -> np.ndarray:
        """Probabilities ``(N, classes)`` (or the model's first output) for raw inputs, ``batch`` rows per run
        (default DEFAULT_BATCH; N rows in one run with ``batch=len(x)``).

        A model whose batch axis is a fixed number B runs B rows per call (row by row for
        B = 1), whatever ``batch`` says; N must then be a multiple of B.
        """
        feeds = self.feeds(x, source)
        n = len(next(iter(feeds.values())))
        batch = DEFAULT_BATCH if batch is None else batch
        if self.fixed_batch is not None:
            batch = self._fixed_batch(n, source)
        if not batch or batch >= n:  # batch=0: one run, as before DEFAULT_BATCH
            return self._run(feeds, source)
        parts = [self._run({k: v[i:i + batch] for k, v in feeds.items()}, source) for i in range(0, n, batch)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _fixed_batch(self, n: int, source: str) -> int:
        b = self.fixed_batch
        if n % b:
            raise DataError(f"{self.path}: the model's batch axis is fixed at {b}, so it runs exactly {b} examples "
                            f"at a time; {source} holds {n}, not a multiple of {b}: give a multiple of {b}, or "
                            f"export the model with a symbolic batch axis")
        return b

    def _run(self, feeds: dict[str, np.ndarray], source: str) -> np.ndarray:
        """One onnxruntime call; its own exception types become one DataError line naming the model file."""
        try:
            return self.session.run(self.output_names[:1], feeds)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises Fail, InvalidArgument, RuntimeException, ...
            x = next(iter(feeds.values()))
            what = f"a {fmt_shape(x.shape)} {x.dtype} batch" if len(feeds) == 1 else f"a table of {len(x)} rows"
            raise DataError(f"{self.path}: onnxruntime could not run the model on {source} "
                            f"({what}): {_first_line(e)}") from None

    def class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """One sigmoid probability p per row (binary) -> two columns [1 - p, p]; others unchanged."""
        if probs.ndim == 2 and probs.shape[1] == 1 and self.is_classifier:
            return np.concatenate([1.0 - probs, probs], axis=1)
        return probs

    def top(self, x: Any, k: int = 1, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable classes per example: (indices (N, k), probabilities (N, k))."""
        if not self.is_classifier:
            raise UsageError(f"{self.path}: top classes need a classifier (output 'probabilities'), "
                             f"this model outputs {self.output_names[0]!r}")
        return top_k(self.class_probabilities(self.predict(x, batch)), k)

    def name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, input {fmt_shape(self.input_shape)}, outputs {self.output_names})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, largest first: two (N, k) arrays."""
    probs = probs.reshape(len(probs), -1)
    k = max(1, min(int(k), probs.shape[1]))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)


def coerce_input(x: Any, shape: tuple[int, ...], source: str = "input", dtype: Any = np.float32,
                 model: str = "the model") -> np.ndarray:
    """Raw inputs -> ``(N, *shape)`` of ``dtype`` (the model's input type; -1 in ``shape``: any size).

    Accepts (N, *shape), one example, flat rows, or (N, H, W) for 1 channel. Floats take
    any numbers (NaN and inf refused); integer and bool inputs only values that convert
    exactly (1.0 -> 1, not 1.5).
    """
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: inputs must be numbers, found dtype {x.dtype}; the model expects "
                        f"{dtype} values of shape {_batch_dims(shape)}")
    x = _rows(x, shape, source)
    return _as_float(x, dtype, source) if dtype.kind == "f" else _as_exact(x, dtype, source, model)


def _batch_dims(shape: tuple[int, ...]) -> str:
    return "[N" + "".join(f", {d if d >= 0 else '?'}" for d in shape) + "]"


def _fits(found: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return len(found) == len(shape) and all(d < 0 or d == f for f, d in zip(found, shape))


def _rows(x: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """``x`` as (N, *shape): as it is, one example, flat rows, or (N, H, W) for a 1-channel image model."""
    known = all(d >= 0 for d in shape)
    if _fits(x.shape[1:], shape):
        return x
    if _fits(x.shape, shape):
        return x[None]
    if known and x.ndim == 2 and x.shape[1] == math.prod(shape) and len(shape) > 1:
        return x.reshape((len(x), *shape))
    if len(shape) == 3 and shape[0] == 1 and _fits(x.shape[-2:], shape[1:]) and x.ndim in (2, 3):
        return x.reshape((-1, 1, *x.shape[-2:]))
    if len(shape) == 3 and x.ndim in (3, 4) and _fits(x.shape[-3:], (shape[1], shape[2], shape[0])):
        x = x[None] if x.ndim == 3 else x
        return x.transpose(0, 3, 1, 2)  # channels last (N, H, W, C): the only reading that fits
    if len(shape) == 1 and x.ndim == 2:
        raise DataError(f"{source}: {x.shape[1]} features per row, but the model expects {shape[0]} "
                        f"(input shape {_batch_dims(shape)})")
    hint = ""
    if len(shape) == 3 and x.ndim in (3, 4) and all(d > 0 for d in shape):
        from ..data import describe_examples

        c, h, w = shape
        hint = (f": {describe_examples(x.shape[1:])}; resize them to {w}x{h} with {c} channel{'s' * (c > 1)}, or "
                f"give the image files (predict converts and resizes those)")
    raise DataError(f"{source}: input of shape {fmt_shape(x.shape)} does not fit the model, which expects "
                    f"{_batch_dims(shape)} (N examples of shape {fmt_shape(shape)}){hint}")


def _as_float(x: np.ndarray, dtype: np.dtype, source: str) -> np.ndarray:
    if x.dtype.kind == "f" and x.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):  # values beyond the range become inf, reported below
            y = np.ascontiguousarray(x, dtype=dtype)
    else:
        y = np.ascontiguousarray(x, dtype=dtype)
    if not np.isfinite(y.sum(dtype=np.float64)):  # finite iff every value is (float64 cannot overflow here)
        narrowed = y.dtype != x.dtype and np.isfinite(x.sum(dtype=np.float64))
        why = f"values beyond the {dtype} range (largest {float(np.finfo(dtype).max):g})" if narrowed else "NaN or inf"
        raise DataError(f"{source}: inputs contain {why}")
    return y


def _as_exact(x: np.ndarray, dtype: np.dtype, source: str, model: str) -> np.ndarray:
    """``x`` cast to an integer or bool input type, refused when any value would change."""
    if x.dtype == dtype:
        return np.ascontiguousarray(x)
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.ascontiguousarray(x, dtype=dtype)
        changed = y != x  # NaN and inf compare unequal to whatever they were cast to
    if changed.any():
        i = int(np.flatnonzero(changed.reshape(-1))[0])
        want = "0 or 1" if dtype.kind == "b" else f"whole numbers from {np.iinfo(dtype).min} to {np.iinfo(dtype).max}"
        raise DataError(f"{source}: {model} takes {dtype} inputs, but the {x.dtype} values given do not convert "
                        f"exactly ({x.reshape(-1)[i].item()!r} in example {i // max(1, x[0].size)}); give {want}")
    return y


# --- reading input files -----------------------------------------------------------


def load_inputs(path: str | os.PathLike, shape: tuple[int, ...], schema: DataSchema | None = None,
                resize: str = "") -> np.ndarray:
    """Raw examples from .npy, .npz, .csv, IDX (optionally .gz) or an image file.

    ``schema``: a table model's; its CSV columns are then found by header name and the
    label column dropped (:func:`dnnspec.tables.read_inputs`). ``resize``: how images are
    brought to the model's size (its training images' mode).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such input file" + (" (it is a folder)" if path.is_dir() else ""))
    name = path.name.lower()
    if name.endswith(".npy"):
        return _read_npy(path)
    if name.endswith(".npz"):
        return _read_npz(path)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return _read_csv(path, schema)[0]
    if name.endswith(IMAGE_SUFFIXES):
        return _read_image(path, shape, resize)
    if "idx" in name or "ubyte" in name:
        from ..data import read_idx

        return read_idx(path)
    raise UsageError(f"{path}: unknown input format; use .npy, .npz, .csv, an IDX file (*-ubyte[.gz]), an image "
                     f"(PNG, JPEG, BMP, GIF) or a folder of images")


def _read_npy(path: Path) -> np.ndarray:
    from ..data import read_npy

    return read_npy(path)


def _read_npz(path: Path) -> np.ndarray:
    """The input array of a .npz: ``x``, ``x_test``, ``X``, ``inputs`` or ``images``, or its only array."""
    from ..data import read_npz_arrays

    def choose(names: list[str]) -> list[str]:
        for key in ("x", "x_test", "X", "inputs", "images"):
            if key in names:
                return [key]
        if len(names) == 1:
            return names
        raise DataError(f"{path}: which array holds the inputs? found {', '.join(names) or 'none'}; "
                        "name it x (np.savez(path, x=inputs))")

    return next(iter(read_npz_arrays(path, choose).values()))


def _read_csv(path: Path, schema: DataSchema | None = None) -> tuple[np.ndarray, list[str]]:
    """(examples, notes): a table model's columns by header name, else numbers (a non-numeric first row: a header)."""
    if schema is not None and schema.kind == "table":
        from ..tables import read_inputs

        return read_inputs(path, schema)
    from ..data import read_csv_table

    return read_csv_table(path)[1].astype(np.float32), []


def _read_image(path: Path, shape: tuple[int, ...], resize: str = "") -> np.ndarray:
    """One image -> (1, C, H, W) uint8, grey for one channel, RGB for three; its size must match unless resized."""
    from ..images import read_image

    return read_image(path, shape, resize)[None]


# --- several inputs: what `dnnspec predict` takes ----------------------------------------------------

GLOB_CHARS = "*?["


@dataclass
class Inputs:
    """Examples read from several sources: one array per source, a name per example, notes for the user."""

    parts: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: bool = False  # the names are image files


def expand(args: list[str]) -> list[Path]:
    """Paths as given; a pattern with * ? [ that names no file is expanded (sorted), as a shell would."""
    out: list[Path] = []
    for arg in args:
        p = Path(arg).expanduser()
        if p.exists() or not any(c in arg for c in GLOB_CHARS):
            out.append(p)
            continue
        found = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
        if not found:
            raise UsageError(f"{arg}: no files match this pattern")
        out += [Path(f) for f in found]
    return out


def read_inputs(args: list[str], pred: Predictor, limit: int | None = None) -> Inputs:
    """Every input ``dnnspec predict`` is given, in order, at most ``limit`` examples.

    Image files and folders of images (searched recursively, e.g. a class-folder tree) are
    decoded together, in parallel, converted and resized as the model's training images
    were; other files are read by :func:`load_inputs`.
    """
    from ..images import images_in

    paths = expand(args)
    out = Inputs()
    images = [p for p in paths if (p.is_dir() and not _idx_folder(p)) or p.name.lower().endswith(IMAGE_SUFFIXES)]
    if images and len(images) != len(paths):
        raise UsageError("give either images (files or folders) or data files (.npy, .npz, .csv, IDX), not both")
    if images:
        files = images_in(images)[:limit]
        if not files:
            raise UsageError(f"{', '.join(map(str, images))}: no images (PNG, JPEG, BMP, GIF) found")
        out.parts.append(_decode(files, pred))
        out.names, out.files = [str(f) for f in files], True
        return out
    left = limit
    for path in paths:
        x, notes = _read_one(path, pred)
        x = x[:left] if left is not None else x
        out.parts.append(x)
        out.notes += notes
        if left is not None:
            left -= len(x)
            if left <= 0:
                break
    start = 0
    for x in out.parts:
        out.names += [str(start + i) for i in range(len(x))]
        start += len(x)
    return out


def _idx_folder(path: Path) -> bool:
    from ..data import _find_idx

    return _find_idx(path, "train-images-idx3-ubyte") is not None


def _read_one(path: Path, pred: Predictor) -> tuple[Any, list[str]]:
    if path.is_file() and path.name.lower().endswith((".csv", ".csv.gz")):
        return _read_csv(path, pred.schema)
    if (path.is_dir() and _idx_folder(path)) or (not path.exists() and str(path).split(":")[0] in _builtins()):
        return _read_source(str(path), pred)
    x = load_inputs(path, pred.input_shape, pred.schema, pred.resize)
    return (x if pred.table is not None else pred.prepare(x, str(path))), []


def _builtins() -> tuple[str, ...]:
    from ..data import BUILTINS

    return BUILTINS


def _read_source(source: str, pred: Predictor) -> tuple[np.ndarray, list[str]]:
    """A source as ``train --data`` names it (an IDX folder, a built-in set): its test split, else all of it."""
    from types import SimpleNamespace

    from ..data import read_source

    ds = read_source(source, SimpleNamespace(path="", data=None))
    test = ds.x_test is not None
    x = ds.x_test if test else ds.x_train
    note = f"{source}: the test split, {len(x):,} examples" if test else f"{source}: {len(x):,} examples"
    return pred.prepare(x, source), [note]


def _decode(files: list[Path], pred: Predictor) -> np.ndarray:
    """Image files as the model's (N, C, H, W) uint8 input, decoded in parallel."""
    from ..images import decode_all

    shape = pred.input_shape
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"{pred.path}: the model's input {_batch_dims(shape)} is not an image; give .npy, .npz, "
                         f".csv or IDX inputs")
    if len(files) == 1:
        return _read_image(files[0], shape, pred.resize)
    return decode_all(files, shape, pred.resize, where=os.path.commonpath([str(f) for f in files]) or ".",
                      cache=False)
