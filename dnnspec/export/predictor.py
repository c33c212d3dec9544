"""Run an exported ONNX model with onnxruntime: ``dnnspec.Predictor``.

    p = Predictor("model.onnx")            # provider="cpu" | "cuda", threads=None
    probs = p.predict(x)                   # x raw, (N, *input_shape) or one example
    idx, prob = p.top(x, k=3)              # (N, k) class ids and probabilities
    p.class_names, p.input_shape           # read from the model's metadata / input

Inputs are checked before they reach onnxruntime: a wrong shape, feature count or
dtype is a :class:`~dnnspec.errors.DataError` naming the shape the model expects.
:func:`load_inputs` reads ``.npy``, ``.npz``, ``.csv``, IDX and PNG/JPEG files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, DataError, UsageError
from ..shapes import fmt_shape

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
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
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(int(d) if isinstance(d, int) else -1 for d in inp.shape[1:])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.class_names = self._class_names()

    def _class_names(self) -> list[str]:
        try:
            names = json.loads(self.metadata.get("class_names", "[]"))
        except json.JSONDecodeError:
            names = []
        if not names and self.output_names[0] == "probabilities":
            width = self.session.get_outputs()[0].shape[-1]
            names = [str(i) for i in range(2 if width == 1 else int(width))] if isinstance(width, int) else []
        return [str(n) for n in names]

    @property
    def is_classifier(self) -> bool:
        return self.output_names[0] == "probabilities"

    def prepare(self, x: Any, source: str = "input") -> np.ndarray:
        """Raw examples -> float32 ``(N, *input_shape)``; DataError naming the expected shape otherwise."""
        return coerce_input(x, self.input_shape, source)

    def predict(self, x: Any, batch: int | None = None, source: str = "input") -> np.ndarray:
        """Probabilities ``(N, classes)`` (or the model's first output) for raw inputs, ``batch`` rows per run."""
        x = self.prepare(x, source)
        if not batch or batch >= len(x):
            return self.session.run(self.output_names[:1], {self.input_name: x})[0]
        parts = [self.session.run(self.output_names[:1], {self.input_name: x[i:i + batch]})[0]
                 for i in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

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


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, largest first: two (N, k) arrays."""
    k = max(1, min(int(k), probs.shape[1]))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)


def coerce_input(x: Any, shape: tuple[int, ...], source: str = "input") -> np.ndarray:
    """Raw inputs -> float32 (N, *shape): accepts (N, *shape), one example, flat rows, or (N, H, W) for 1 channel."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: inputs must be numbers, found dtype {x.dtype}; the model expects "
                        f"float32 values of shape [N, {', '.join(map(str, shape))}]")
    size = math.prod(shape)
    if x.shape[1:] == shape:
        pass
    elif x.shape == shape:
        x = x[None]
    elif x.ndim == 2 and x.shape[1] == size and len(shape) > 1:
        x = x.reshape((len(x), *shape))
    elif len(shape) == 3 and shape[0] == 1 and x.shape[-2:] == shape[1:] and x.ndim in (2, 3):
        x = x.reshape((-1, *shape))
    elif len(shape) == 1 and x.ndim == 2:
        raise DataError(f"{source}: {x.shape[1]} features per row, but the model expects {shape[0]} "
                        f"(input shape [N, {shape[0]}])")
    else:
        raise DataError(f"{source}: input of shape {fmt_shape(x.shape)} does not fit the model, which expects "
                        f"[N, {', '.join(map(str, shape))}] (N examples of shape {fmt_shape(shape)})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x.sum(dtype=np.float64)):  # finite iff every value is (float64 cannot overflow here)
        raise DataError(f"{source}: inputs contain NaN or inf")
    return x


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
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npy file ({e}); is it truncated or corrupt?") from None


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            for key in ("x", "x_test", "X", "inputs", "images"):
                if key in keys:
                    return z[key]
            if len(keys) == 1:
                return z[keys[0]]
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npz file ({e}); is it truncated or corrupt?") from None
    raise DataError(f"{path}: which array holds the inputs? found {', '.join(keys) or 'none'}; "
                    "name it x (np.savez(path, x=inputs))")


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
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            arr = np.asarray(img)
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    if arr.shape[:2] != (h, w):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} pixels but the model expects "
                        f"{w}x{h} (width x height); resize it first")
    return arr.reshape(1, h, w, c).transpose(0, 3, 1, 2)
