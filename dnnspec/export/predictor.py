"""Run an exported ONNX model with onnxruntime: ``dnnspec.Predictor``.

    p = Predictor("model.onnx")            # provider="cpu" | "cuda", threads=None
    probs = p.predict(x)                   # x raw, (N, *input_shape) or one example
    idx, prob = p.top(x, k=3)              # (N, k) class ids and probabilities
    p.class_names, p.input_shape           # read from the model's metadata / input

Inputs are checked before they reach onnxruntime: a wrong shape, feature count or
dtype is a :class:`~dnnspec.errors.DataError` naming the shape the model expects.
Values are cast to the model's input type when that loses nothing (whole floats to an
int64 input), a model with a fixed batch axis runs that many rows per call, and any
error onnxruntime still raises becomes one DataError line naming the model file.
:func:`load_inputs` reads ``.npy``, ``.npz``, ``.csv``, IDX and PNG/JPEG files, checking
sizes (array headers, image dimensions) before decoding.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, DataError, UsageError
from ..shapes import fmt_shape

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: onnxruntime's input types that predict can feed, as NumPy dtypes.
ORT_DTYPES = {f"tensor({name})": np.dtype(dt) for name, dt in (
    ("float", np.float32), ("double", np.float64), ("float16", np.float16), ("bool", np.bool_),
    ("int8", np.int8), ("int16", np.int16), ("int32", np.int32), ("int64", np.int64),
    ("uint8", np.uint8), ("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64))}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
        inp = self._the_input()
        self.input_name = inp.name
        self.input_dtype = ORT_DTYPES[inp.type]
        #: rows per run when the model's batch axis is a fixed number, else None (any N)
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.input_shape = tuple(int(d) if isinstance(d, int) else -1 for d in inp.shape[1:])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.class_names = self._class_names()

    def _the_input(self) -> Any:
        """The model's one input, which must be a numeric tensor with a batch axis (CheckpointError otherwise)."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise CheckpointError(f"{self.path}: predict runs models with one input; this one has {len(inputs)} "
                                  f"({names})")
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
        """Raw examples -> ``(N, *input_shape)`` of the model's input type; DataError naming what it expects."""
        return coerce_input(x, self.input_shape, source, self.input_dtype, str(self.path))

    def predict(self, x: Any, batch: int | None = None, source: str = "input") -> np.ndarray:
        """Probabilities ``(N, classes)`` (or the model's first output) for raw inputs, ``batch`` rows per run.

        A model whose batch axis is a fixed number B runs B rows per call (row by row for
        B = 1), whatever ``batch`` says; N must then be a multiple of B.
        """
        x = self.prepare(x, source)
        if self.fixed_batch is not None:
            batch = self._fixed_batch(len(x), source)
        if not batch or batch >= len(x):
            return self._run(x, source)
        parts = [self._run(x[i:i + batch], source) for i in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _fixed_batch(self, n: int, source: str) -> int:
        b = self.fixed_batch
        if n % b:
            raise DataError(f"{self.path}: the model's batch axis is fixed at {b}, so it runs exactly {b} examples "
                            f"at a time; {source} holds {n}, not a multiple of {b}: give a multiple of {b}, or "
                            f"export the model with a symbolic batch axis")
        return b

    def _run(self, x: np.ndarray, source: str) -> np.ndarray:
        """One onnxruntime call; its own exception types become one DataError line naming the model file."""
        try:
            return self.session.run(self.output_names[:1], {self.input_name: x})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises Fail, InvalidArgument, RuntimeException, ...
            raise DataError(f"{self.path}: onnxruntime could not run the model on {source} "
                            f"(a {fmt_shape(x.shape)} {x.dtype} batch): {_first_line(e)}") from None

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
    if len(shape) == 1 and x.ndim == 2:
        raise DataError(f"{source}: {x.shape[1]} features per row, but the model expects {shape[0]} "
                        f"(input shape {_batch_dims(shape)})")
    raise DataError(f"{source}: input of shape {fmt_shape(x.shape)} does not fit the model, which expects "
                    f"{_batch_dims(shape)} (N examples of shape {fmt_shape(shape)})")


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


def load_inputs(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Raw examples from .npy, .npz, .csv, IDX (optionally .gz) or an image file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such input file" + (" (it is a folder)" if path.is_dir() else ""))
    name = path.name.lower()
    if name.endswith(".npy"):
        return _read_npy(path)
    if name.endswith(".npz"):
        return _read_npz(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    if name.endswith(IMAGE_SUFFIXES):
        return _read_image(path, shape)
    if "idx" in name or "ubyte" in name:
        from ..data import read_idx

        return read_idx(path)
    raise UsageError(f"{path}: unknown input format; use .npy, .npz, .csv, an IDX file (*-ubyte[.gz]) or PNG/JPEG")


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


def _read_csv(path: Path) -> np.ndarray:
    """Numbers separated by commas, one example per row; a first row that is not numeric is a header."""
    from ..data import read_csv_table

    return read_csv_table(path)[1].astype(np.float32)


def _read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One image -> (1, C, H, W) uint8, grey for one channel, RGB for three; its size must match."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install 'dnnspec[images]'") from None
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{path}: the model's input {fmt_shape(shape)} is not a 1- or 3-channel image")
    c, h, w = shape
    try:
        with warnings.catch_warnings():
            # The size is checked below; Pillow's warnings about damaged metadata would be more lines.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:  # reads the header only
                if img.size != (w, h):
                    raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]} pixels but the model expects "
                                    f"{w}x{h} (width x height); resize it first")
                arr = np.asarray(img.convert("L" if c == 1 else "RGB"))
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode ({e}); the model expects {w}x{h} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # Pillow's plugins raise these
        raise DataError(f"{path}: cannot read image ({e})") from None
    return arr.reshape(1, h, w, c).transpose(0, 3, 1, 2)
