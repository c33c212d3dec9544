"""Dynamic int8 quantization of an exported model (the lecture's "model compression").

``onnxruntime.quantization.quantize_dynamic`` stores the Gemm/MatMul and Conv weights
as int8 with one scale per tensor; activations are quantized on the fly at run time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """The int8 (weights) version of a float32 ONNX model, as bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint as a warning
    try:
        with tempfile.TemporaryDirectory(prefix="dnnspec-q-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(onnx_bytes)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.setLevel(level)


def accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> float:
    """Classification accuracy of a model (bytes) on raw inputs ``x`` and class labels ``y``."""
    from .predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="dnnspec-acc-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        pred = Predictor(path)
        probs = pred.class_probabilities(pred.predict(x, batch=batch))
    return float(np.mean(probs.argmax(axis=1) == np.asarray(y).reshape(-1)))
