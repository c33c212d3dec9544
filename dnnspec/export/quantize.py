"""int8 quantization of an exported model (the lecture's "model compression").

Two ways, both with ``onnxruntime.quantization``:

* **dynamic** (``--quantize int8``): the weights of the dense layers (Gemm/MatMul) are
  stored as int8 with one scale per tensor; each activation is quantized at run time
  from its own batch's min and max. No data is needed. Convolutions stay float32:
  onnxruntime 1.32 runs a dynamically quantized Conv as ``ConvInteger``, which on the
  Fashion-MNIST CNN was 5x slower at batch 1 and 10x slower at batch 1024 than the
  float32 Conv (see docs/export.md), for a file only 0.05 MB smaller.
* **static** (``--quantize int8-static``): QDQ format. A calibration pass runs the
  float32 model over a seeded sample of training examples and records each
  activation's min and max (MinMax); every Conv, Gemm and MatMul then reads
  ``DequantizeLinear(QuantizeLinear(x))`` with those fixed scales, and onnxruntime fuses
  ``DQ -> Conv -> Q`` into ``QLinearConv`` (``QGemm`` for dense layers) when it loads
  the model, so convolutions run in int8 too.

Quantization maps a float ``x`` to ``q = clip(round(x / s) + z, lo, hi)`` and back to
``s * (q - z)``: activations uint8 (``lo, hi = 0, 255``) with ``s = (max - min) / 255`` and
``z = round(-min / s)`` over the calibrated range (widened to hold 0); weights int8,
symmetric (``z = 0``, ``s = max|W| / 127``), per output channel in static mode, since a
folded batch norm scales each filter differently. The input's scale/normalisation
(``Mul``/``Add``) and the final softmax stay float32: quantizing probabilities to steps of
1/255 would create ties in the top class.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import UsageError

MODES = ("int8", "int8-static")
#: op types quantized dynamically (int8 weights, activations quantized per batch)
DYNAMIC_OPS = ("MatMul", "Gemm")
#: op types given QDQ pairs in static mode; Relu disappears into its producer's range,
#: pools and Flatten pass int8 through unchanged
STATIC_OPS = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "Relu", "Flatten", "Reshape")
#: onnxruntime 1.32 has no CPU kernel for QuantizeLinear-28 ("Could not find an
#: implementation for QuantizeLinear(28)"), so static models are written at opset 27
QDQ_MAX_OPSET = 27
DEFAULT_CALIBRATION = 512
CALIBRATION_BATCH = 64  # examples per calibration run: memory is one batch's activations


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's warnings (a pre-processing hint) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """Dynamic int8: the dense layers' weights as int8 (one scale per tensor), as bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(), tempfile.TemporaryDirectory(prefix="dnnspec-q-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(DYNAMIC_OPS))
        return dst.read_bytes()


def static_opset(requested: int | None) -> int:
    """The opset to export at for static int8: ``requested``, or QDQ_MAX_OPSET when None."""
    if requested is None:
        return QDQ_MAX_OPSET
    if int(requested) > QDQ_MAX_OPSET:
        raise UsageError(f"--quantize int8-static needs --opset {QDQ_MAX_OPSET} or lower: onnxruntime has no "
                         f"QuantizeLinear kernel at opset {requested}; drop --opset (it then exports at "
                         f"{QDQ_MAX_OPSET})")
    return int(requested)


def calibration_sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``min(n, N)`` of the ``N`` examples ``x``, drawn without replacement by ``default_rng(seed)``.

    Returned float32 in raw units, in their order in ``x``: ``(min(n, N), *x.shape[1:])``. The
    exported model scales and normalises inside, so raw inputs are what it is calibrated on.
    """
    if int(n) < 1:
        raise UsageError(f"--calibration {n}: give the number of training examples to calibrate on (1 or more; "
                         f"default {DEFAULT_CALIBRATION})")
    n = min(int(n), len(x))
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return np.asarray(x[idx], dtype=np.float32)


class BatchReader:
    """A CalibrationDataReader: ``{input_name: x[i:i+batch]}`` per ``get_next()`` call, then None."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.input_name, self.x, self.batch, self.start = input_name, x, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.x):
            return None
        chunk = self.x[self.start:self.start + self.batch]
        self.start += self.batch
        return {self.input_name: chunk}


def quantize_static_int8(onnx_bytes: bytes, x_calib: np.ndarray, batch: int = CALIBRATION_BATCH) -> bytes:
    """Static int8 in QDQ format, calibrated (MinMax) on raw inputs ``x_calib`` ``(n, *input_shape)``.

    The model's opset must be at most QDQ_MAX_OPSET. Same model and ``x_calib``, same bytes.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load_model_from_string(onnx_bytes)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    static_opset(opset)
    if len(x_calib) == 0:
        raise UsageError("static int8 quantization needs at least one calibration example")
    reader = BatchReader(proto.graph.input[0].name, np.asarray(x_calib, np.float32), batch)
    with _quiet(), tempfile.TemporaryDirectory(prefix="dnnspec-qs-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(STATIC_OPS), calibrate_method=CalibrationMethod.MinMax)
        return dst.read_bytes()


def with_note(onnx_bytes: bytes, note: str) -> bytes:
    """The model with ``metadata_props["quantization"] = note`` (replacing an earlier one)."""
    import onnx

    proto = onnx.load_model_from_string(onnx_bytes)
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != "quantization"]
    del proto.metadata_props[:]
    for key, value in [*keep, ("quantization", note)]:
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> float:
    """Classification accuracy of a model (bytes) on raw inputs ``x`` and class labels ``y``."""
    from .predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="dnnspec-acc-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        pred = Predictor(path)
        probs = pred.class_probabilities(pred.predict(x, batch=batch))
    return float(np.mean(probs.argmax(axis=1) == np.asarray(y).reshape(-1)))


# --- latency ----------------------------------------------------------------------


def alternating_rounds(fns: Mapping[str, Callable[[], object]], rounds: int, calls: int, warmup: int = 1,
                       budget_s: float | None = None) -> dict[str, list[float]]:
    """Median seconds per call of each function, per round: ``{name: [round_0, ...]}``.

    Each round runs every function ``calls`` times in turn (in reverse order on odd
    rounds), so that a slow spell of a shared machine hits all of them alike; the ratio
    of two functions is then taken within each round. Each turn starts with ``warmup``
    untimed calls (caches, and the thread pool of the function that ran before). With
    ``budget_s``, no new round starts once that many seconds have passed (one round at least).
    """
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        if r and budget_s is not None and time.perf_counter() - start > budget_s:
            break
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(warmup):
                fns[name]()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fns[name]()
                times.append(time.perf_counter() - t0)
            out[name].append(statistics.median(times))
    return out


def session_runner(onnx_bytes: bytes, x: np.ndarray, threads: int | None = None) -> Callable[[], object]:
    """A function that runs the model (bytes) once on ``x`` in an onnxruntime CPU session."""
    import onnxruntime as ort

    from .predictor import session_options

    opts = session_options(threads)
    # Without this, a session's threads spin on after each run and slow the other model's turn.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: sess.run(None, feed)


def compare_latency(float_bytes: bytes, int8_bytes: bytes, x: np.ndarray, rounds: int = 5, calls: int = 50,
                    threads: int | None = None, budget_s: float | None = None) -> dict[str, float]:
    """Time per call of both models on ``x`` ``(batch, *input_shape)``, in alternating rounds.

    Returns ``float32`` and ``int8`` (median seconds per call over the rounds), ``ratio``
    (median over rounds of int8 / float32 within the round) and ``rounds`` (how many ran).
    """
    fns = {"float32": session_runner(float_bytes, x, threads), "int8": session_runner(int8_bytes, x, threads)}
    t = alternating_rounds(fns, rounds, calls, budget_s=budget_s)
    ratios = [q / f for q, f in zip(t["int8"], t["float32"], strict=True)]
    return {"float32": statistics.median(t["float32"]), "int8": statistics.median(t["int8"]),
            "ratio": statistics.median(ratios), "rounds": len(ratios)}
