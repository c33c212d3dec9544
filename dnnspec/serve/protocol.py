"""The Open Inference Protocol (KServe V2) wire format: requests in, responses out.

Pure NumPy and JSON, no web framework: the app hands this module the raw body and
the ``Inference-Header-Content-Length`` header, and gets back checked arrays, or an
:class:`InferenceError` carrying the HTTP status and a one-line message.

Binary tensor data extension (what ``tritonclient.http`` sends by default): the body
is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
tensors, in the order of ``inputs``, each ``parameters.binary_data_size`` bytes long,
little-endian and row-major. Outputs come back the same way when asked for with
``parameters.binary_data`` (per output) or ``parameters.binary_data_output`` (all).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import DnnspecError

# V2 datatype -> NumPy dtype ("<" = the protocol's little-endian byte order).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
# onnxruntime NodeArg.type -> V2 datatype.
ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
TOP_K_CLASSES = "top_k_classes"
TOP_K_SCORES = "top_k_scores"


class InferenceError(DnnspecError):
    """A request the server refuses; ``status`` is the HTTP status (4xx client, 5xx server), ``reason``
    the failure reason its metrics count it under (Triton's: REJECTED, CANCELED, BACKEND, OTHER)."""

    def __init__(self, message: str, status: int = 400, reason: str = "OTHER"):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol shows it; ``shape`` has -1 for free dims."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputRequest:
    """One entry of the request's ``outputs``: binary or JSON, optional Triton classification."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """A checked inference request: ``inputs`` maps names to arrays of ``rows`` rows."""

    inputs: dict[str, np.ndarray]
    rows: int
    id: str | None = None
    outputs: list[OutputRequest] | None = None
    binary_output: bool = False
    top_k: int = 0
    parameters: dict = field(default_factory=dict)


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """Split a request body into its JSON header (a dict) and the binary part after it."""
    if header_length is None:
        end = len(body)
    else:
        try:
            end = int(header_length)
        except ValueError:
            raise InferenceError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < end <= len(body):
            raise InferenceError(
                f"Inference-Header-Content-Length is {end} but the body has {len(body)} bytes")
    try:
        header = json.loads(body[:end])
    except (UnicodeDecodeError, ValueError) as e:
        hint = " (is Inference-Header-Content-Length right?)" if header_length is not None else ""
        raise InferenceError(f"malformed JSON in request: {e}{hint}") from None
    except RecursionError:  # the C decoder recurses once per [ or {: ~1,000 levels exhaust the stack
        raise InferenceError("JSON in request is nested too deeply; no request needs more than a few levels "
                             "(tensor 'data' may be flat)") from None
    if not isinstance(header, dict):
        raise InferenceError("request body must be a JSON object")
    return header, memoryview(body)[end:]


@dataclass(frozen=True)
class _Plan:
    """A checked binary-only request header: where each input's bytes lie, and the rest of the request."""

    tensors: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]  # name, dtype, shape, offset, size
    binary_size: int
    rows: int
    id: str | None
    outputs: list[OutputRequest] | None
    binary_output: bool
    top_k: int
    parameters: dict


class BoundedCache:
    """A dict holding at most ``entries`` items and ``nbytes`` bytes; the oldest items go first.

    Each item is stored with its size (``put``); an item over ``item_bytes`` is never stored.
    The caches of the server hold what clients sent, so a bound on the count alone lets one
    client pin count x (largest request) bytes: 256 checked headers of 4 MiB each is 1 GiB.
    ``get`` is the plain ``dict.get`` of the items (the hot path pays nothing for the bound).
    """

    def __init__(self, entries: int, nbytes: int, item_bytes: int):
        self.entries, self.nbytes, self.item_bytes = entries, nbytes, item_bytes
        self._items: dict = {}
        self._sizes: dict = {}
        self.size = 0  # bytes held: the sum of the stored items' sizes
        self.get = self._items.get

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key, value, size: int) -> None:
        """Store ``value`` under ``key`` (unless it is too big or already there), dropping the oldest to fit."""
        if size > self.item_bytes or key in self._items:
            return
        while self._items and (len(self._items) >= self.entries or self.size + size > self.nbytes):
            oldest = next(iter(self._items))
            del self._items[oldest]
            self.size -= self._sizes.pop(oldest)
        self._items[key] = value
        self._sizes[key] = size
        self.size += size


#: Checked headers by (header bytes, model inputs, output names, max_rows): clients send the
#: same JSON header for every request of one shape (tritonclient does, in ~200 bytes), so
#: parsing and checking it once is enough; only the binary tensors differ. Headers over
#: 16 KiB are never kept, and all kept headers together stay under 1 MiB, so the plans
#: (which hold the parsed header) stay under ~20 MiB whatever clients send (an empty JSON
#: list takes 3 bytes on the wire and 64 in Python) and under 1 MiB for real clients.
_PLANS = BoundedCache(entries=256, nbytes=1 << 20, item_bytes=16 << 10)


def json_bytes(obj) -> bytes:
    """Compact JSON (no spaces), as every response body of the server is written."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _from_plan(plan: _Plan, binary: memoryview, check_finite: bool) -> InferRequest:
    arrays = {}
    for name, dtype, shape, offset, size in plan.tensors:
        arrays[name] = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        if check_finite:
            require_finite(arrays[name], name)
    return InferRequest(inputs=arrays, rows=plan.rows, id=plan.id, outputs=plan.outputs,
                        binary_output=plan.binary_output, top_k=plan.top_k, parameters=plan.parameters)


def parse_infer_request(body: bytes, header_length: str | None, inputs: list[TensorSpec],
                        output_names: list[str], max_rows: int, check_finite: bool = True) -> InferRequest:
    """Check a V2 infer request against a model's inputs and outputs; raise InferenceError.

    ``check_finite=False`` leaves the NaN/infinity check of float inputs to the caller
    (the batcher does it once per merged batch, see :func:`require_finite`). Binary
    inputs are read-only views of ``body``. A request whose inputs are all binary has
    its header checked once per distinct header (:data:`_PLANS`); ``outputs`` and
    ``parameters`` of the result may then be shared between requests: read them only.
    """
    key = None
    if (header_length is not None and header_length.isdigit()
            and 0 < (end := int(header_length)) <= min(len(body), _PLANS.item_bytes)):
        key = (body[:end], tuple(inputs), tuple(output_names), max_rows)
        plan = _PLANS.get(key)
        if plan is not None and plan.binary_size == len(body) - end:
            return _from_plan(plan, memoryview(body)[end:], check_finite)
    header, binary = split_body(body, header_length)
    params = _dict(header.get("parameters", {}), "parameters")
    req_inputs = header.get("inputs")
    if not isinstance(req_inputs, list) or not req_inputs:
        raise InferenceError("request needs a non-empty 'inputs' list")
    layout: list = []
    arrays = _parse_inputs(req_inputs, binary, {s.name: s for s in inputs}, layout, max_rows)
    if check_finite:
        for name, arr in arrays.items():
            require_finite(arr, name)
    rows = _check_rows(arrays, inputs, max_rows)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferenceError("'id' must be a string")
    request = InferRequest(
        inputs=arrays, rows=rows, id=request_id,
        outputs=_parse_outputs(header.get("outputs"), output_names),
        binary_output=bool(params.get("binary_data_output", False)),
        top_k=_parse_top_k(params.get("top_k", 0)), parameters=params)
    if key is not None and len(layout) == len(arrays):  # every input binary: remember the checked header
        plan = _Plan(tuple(layout), len(binary), rows, request.id, request.outputs, request.binary_output,
                     request.top_k, request.parameters)
        _PLANS.put(key, plan, len(key[0]))
    return request


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InferenceError(f"'{what}' must be a JSON object, got {type(value).__name__}")
    return value


def _parse_inputs(req_inputs: list, binary: memoryview, specs: dict[str, TensorSpec],
                  layout: list | None = None, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Decode every input tensor (JSON ``data`` or binary) and check it against ``specs``.

    ``layout`` collects ``(name, dtype, shape, offset, size)`` of each fixed-size binary input
    (BYTES tensors, whose elements have their own lengths, are decoded every time). A BYTES
    tensor is refused over ``max_rows`` rows before its strings are made.
    """
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in req_inputs:
        item = _dict(item, "inputs[]")
        name = item.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise InferenceError(f"unknown input {name!r}; the model's inputs are {sorted(specs)}")
        if name in arrays:
            raise InferenceError(f"input '{name}' is given twice")
        shape = _check_shape(item, spec)
        if spec.datatype == "BYTES" and max_rows is not None and shape and shape[0] > max_rows:
            raise InferenceError(f"batch of {shape[0]} rows is over the limit of {max_rows} rows per request")
        size = _binary_size(item)
        if size is None:
            arrays[name] = _json_tensor(item, spec, shape)
        else:
            if offset + size > len(binary):
                raise InferenceError(f"input '{name}': binary_data_size {size} runs past the end of the body "
                                     f"({len(binary) - offset} bytes left)")
            arrays[name] = _binary_tensor(binary[offset:offset + size], spec, shape)
            if layout is not None and spec.datatype != "BYTES":
                layout.append((name, arrays[name].dtype, shape, offset, size))
            offset += size
    if offset != len(binary):
        raise InferenceError(f"the body has {len(binary) - offset} bytes of binary data that no input claims "
                             "(check Inference-Header-Content-Length and binary_data_size)")
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise InferenceError(f"missing input(s) {missing}")
    return arrays


def _check_shape(item: dict, spec: TensorSpec) -> tuple[int, ...]:
    """Return the request's shape for ``spec`` after checking datatype, rank and fixed dims."""
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        raise InferenceError(f"input '{spec.name}': datatype {datatype!r} does not match the model's {spec.datatype}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InferenceError(f"input '{spec.name}': 'shape' must be a list of integers, got {shape!r}")
    expected = list(spec.shape)
    if len(shape) != len(expected) or any(e not in (-1, d) or d < 0 for d, e in zip(shape, expected)):
        raise InferenceError(f"input '{spec.name}': shape {shape} does not match the model's {expected}")
    return tuple(shape)


def _binary_size(item: dict) -> int | None:
    params = _dict(item.get("parameters", {}), "parameters")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InferenceError(f"input '{item.get('name')}': binary_data_size must be a non-negative integer")
    if "data" in item:
        raise InferenceError(f"input '{item.get('name')}' has both 'data' and binary_data_size")
    return size


def _json_tensor(item: dict, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Decode ``data`` (flat or nested, row-major) into an array of ``shape``."""
    data = item.get("data")
    if not isinstance(data, list):
        raise InferenceError(f"input '{spec.name}' needs 'data' (a list) or binary_data_size")
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InferenceError(f"input '{spec.name}': 'data' is a ragged nested list, or nested deeper than "
                             "NumPy's 64 dimensions") from None
    if spec.datatype == "BYTES":
        return _json_strings(raw, spec, shape)
    allowed = {"b": "b", "i": "iu", "u": "iu"}.get(DATATYPES[spec.datatype].kind, "iuf")
    if raw.size and raw.dtype.kind not in allowed:
        raise InferenceError(f"input '{spec.name}': 'data' must hold {spec.datatype} numbers, "
                             f"found {_kind_name(raw.dtype.kind)}")
    count = math.prod(shape)
    if raw.size != count:
        raise InferenceError(f"input '{spec.name}': shape {list(shape)} needs {count} elements, got {raw.size}")
    return raw.astype(DATATYPES[spec.datatype], copy=False).reshape(shape)


def _json_strings(raw: np.ndarray, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """A BYTES tensor given as JSON strings -> an object array of ``str`` of ``shape`` (what onnxruntime takes)."""
    if raw.size and raw.dtype.kind != "U":
        raise InferenceError(f"input '{spec.name}': 'data' must hold strings for BYTES, found "
                             f"{_kind_name(raw.dtype.kind) if raw.dtype.kind != 'U' else 'strings'}")
    count = math.prod(shape)
    if raw.size != count:
        raise InferenceError(f"input '{spec.name}': shape {list(shape)} needs {count} elements, got {raw.size}")
    return raw.astype(object).reshape(shape)


def _binary_strings(raw: memoryview, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """A binary BYTES tensor: each element a 4-byte little-endian length and that many UTF-8 bytes."""
    count, out, pos = math.prod(shape), [], 0
    data = bytes(raw)
    while pos < len(data) and len(out) < count:
        if pos + 4 > len(data):
            break
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):
            raise InferenceError(f"input '{spec.name}': element {len(out)} claims {n} bytes, more than are left")
        try:
            out.append(data[pos + 4:pos + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InferenceError(f"input '{spec.name}': element {len(out)} is not UTF-8 text") from None
        pos += 4 + n
    if len(out) != count or pos != len(data):
        raise InferenceError(f"input '{spec.name}': shape {list(shape)} needs {count} length-prefixed strings "
                             f"filling binary_data_size {len(data)} exactly")
    return np.array(out, dtype=object).reshape(shape)


def _kind_name(kind: str) -> str:
    return {"U": "strings", "O": "null or mixed values", "b": "booleans", "f": "non-integers"}.get(kind, "other values")


def _binary_tensor(raw: memoryview, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Decode raw little-endian bytes into an array of ``shape``: a read-only view of the body."""
    if spec.datatype == "BYTES":
        return _binary_strings(raw, spec, shape)
    dtype = DATATYPES[spec.datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise InferenceError(f"input '{spec.name}': shape {list(shape)} of {spec.datatype} needs {need} bytes, "
                             f"binary_data_size is {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def finite_rows(arr: np.ndarray) -> np.ndarray | None:
    """For a float array (N, ...): a bool (N,) row mask, True where every value is finite; None otherwise.

    One float64 sum per row for float16/float32 (finite exactly when every value is:
    |x| < 3.5e38 cannot overflow float64), an elementwise check for float64.
    """
    if arr.dtype.kind != "f":
        return None
    flat = arr.reshape(len(arr), -1)
    if arr.dtype.itemsize <= 4:
        return np.isfinite(flat.sum(axis=1, dtype=np.float64))
    return np.isfinite(flat).all(axis=1)


def require_finite(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` if every value is finite; InferenceError naming NaN or infinity otherwise.

    For float16/float32 one float64 sum decides (it is finite exactly when every value
    is: |x| < 3.5e38 cannot overflow float64 over any array that fits in memory), which
    is cheaper than ``isfinite(...).all()`` on every request; float64 is checked directly.
    """
    if arr.dtype.kind != "f":
        return arr
    if arr.dtype.itemsize <= 4:
        ok = math.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64))
    else:
        ok = bool(np.isfinite(arr).all())
    if not ok:
        bad = "NaN" if np.isnan(arr).any() else "infinity"
        raise InferenceError(f"input '{name}' contains {bad}; every value must be finite")
    return arr


def _check_rows(arrays: dict[str, np.ndarray], specs: list[TensorSpec], max_rows: int) -> int:
    """All inputs must agree on the batch size, which must be in 1..max_rows."""
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) > 1:
        raise InferenceError(f"inputs disagree on the batch size: {sorted(rows)}")
    n = rows.pop()
    if n == 0:
        raise InferenceError("empty batch: the input has 0 rows")
    if n > max_rows:
        raise InferenceError(f"batch of {n} rows is over the limit of {max_rows} rows per request")
    return n


def _parse_outputs(outputs, names: list[str]) -> list[OutputRequest] | None:
    """The ``outputs`` selection, or None for "all outputs"."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InferenceError("'outputs' must be a list")
    chosen: list[OutputRequest] = []
    seen: set[str] = set()
    for item in outputs:
        item = _dict(item, "outputs[]")
        name = item.get("name")
        if name not in names:
            raise InferenceError(f"unknown output {name!r}; the model's outputs are {names}")
        if name in seen:  # each copy would be encoded again: 2,000 copies made a 111 MB answer
            raise InferenceError(f"output '{name}' is asked for more than once; name each output once")
        seen.add(name)
        params = _dict(item.get("parameters", {}), "parameters")
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InferenceError(f"output '{name}': classification must be a non-negative integer")
        chosen.append(OutputRequest(name, bool(params.get("binary_data", False)), k))
    return chosen


def _parse_top_k(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise InferenceError(f"parameter top_k must be a non-negative integer, got {k!r}")
    return k


# ---------------------------------------------------------------- responses

#: The most bytes one element takes in a JSON answer, comma included: ``-1.1754943508222875e-38,``
#: (a float as Python writes it), ``-9223372036854775808,``, ``false,``.
JSON_ELEMENT_BYTES = {"f": 25, "i": 21, "u": 21, "b": 6}
#: The most bytes of a classification string ``"score:index:label",`` besides its label: a float32
#: in ``%f`` (up to 47 characters), a 20-digit index, two colons, quotes and a comma.
CLASSIFICATION_BYTES = 72
#: JSON around the tensors: model name and version, each output's name, datatype and shape.
ANSWER_OVERHEAD = 1024


def answer_bound(outputs: dict[str, np.ndarray], selection: list[OutputRequest], top_k: int, binary_top_k: bool,
                 scores_output: str, label_bytes: int) -> int:
    """An upper bound on the bytes of an answer, from shapes alone: checked before anything is encoded.

    Per output of n elements: ``n * itemsize`` binary, ``n * JSON_ELEMENT_BYTES`` as JSON; a
    classification of k classes over r rows ``r * k * (CLASSIFICATION_BYTES + label_bytes)``;
    ``top_k`` adds r * k labels and r * k scores. k is clamped to the classes there are (more is
    refused later with its own message). ``label_bytes``: the longest class label as JSON.
    """
    total = ANSWER_OVERHEAD * (len(selection) + 3)
    for sel in selection:
        arr = outputs[sel.name]
        if sel.classification:
            rows, width = _rows_width(arr)
            total += rows * min(sel.classification, width) * (CLASSIFICATION_BYTES + label_bytes)
        else:
            total += _tensor_bound(arr, sel.binary)
    if top_k:
        rows, width = _rows_width(outputs[scores_output])
        k = min(top_k, width)
        score_bytes = 8 if binary_top_k else JSON_ELEMENT_BYTES["f"]
        total += rows * k * (label_bytes + 4 + score_bytes)
    return total


def _rows_width(arr: np.ndarray) -> tuple[int, int]:
    rows = arr.shape[0] if arr.ndim else 1
    return rows, arr.size // max(rows, 1)


def _tensor_bound(arr: np.ndarray, binary: bool) -> int:
    if arr.dtype == object:  # BYTES: 4-byte length + UTF-8; in JSON quoted, up to 12 bytes a character (\ud83d\ude00)
        chars = sum(len(s) for s in arr.flat)
        return arr.size * 4 + chars * 4 if binary else arr.size * 3 + chars * 12
    return arr.nbytes if binary else arr.size * JSON_ELEMENT_BYTES.get(arr.dtype.kind, 25)


def top_k(scores: np.ndarray, k: int, class_names: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """The k best classes of each row: (names (N, k) object array, scores (N, k)).

    Ties go to the lower class index (a stable sort), as ``np.argsort(-p, kind="stable")``.
    """
    rows = scores.reshape(scores.shape[0], -1)
    if not 0 < k <= rows.shape[1]:
        raise InferenceError(f"top_k is {k} but the model has {rows.shape[1]} classes")
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    labels = class_names if class_names is not None else [str(i) for i in range(rows.shape[1])]
    names = np.array([[labels[j] for j in r] for r in idx], dtype=object)
    return names, np.take_along_axis(rows, idx, axis=1)


def classification(scores: np.ndarray, k: int, class_names: list[str] | None) -> np.ndarray:
    """Triton's classification extension: (N, k) strings ``"score:index[:label]"``."""
    rows = scores.reshape(scores.shape[0], -1)
    if k > rows.shape[1]:
        raise InferenceError(f"classification asks for {k} classes but the output has {rows.shape[1]}")
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    def text(r: int, j: int) -> str:
        label = f":{class_names[j]}" if class_names is not None and j < len(class_names) else ""
        return f"{float(rows[r, j]):f}:{j}{label}"
    return np.array([[text(r, j) for j in idx[r]] for r in range(rows.shape[0])], dtype=object)


def encode_bytes(arr: np.ndarray) -> bytes:
    """Serialise a BYTES tensor: each element as a 4-byte little-endian length and UTF-8."""
    parts = []
    for s in arr.reshape(-1):
        b = s.encode() if isinstance(s, str) else bytes(s)
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def binary_chunk(arr: np.ndarray) -> bytes:
    """The binary tensor data of a numeric output (little-endian, row-major)."""
    return np.ascontiguousarray(arr, DATATYPES[_DATATYPE_OF[arr.dtype]]).tobytes()


def output_entry(name: str, arr: np.ndarray, binary: bool, chunks: list[bytes]) -> dict:
    """The JSON for one output; its bytes go on ``chunks`` when ``binary``."""
    datatype = "BYTES" if arr.dtype == object else _DATATYPE_OF[arr.dtype]
    entry = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if binary:
        raw = encode_bytes(arr) if datatype == "BYTES" else binary_chunk(arr)
        entry["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    else:
        entry["data"] = arr.reshape(-1).tolist()
    return entry


def encode_response(body: dict, chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The response bytes and headers: JSON alone, or JSON + binary with the header length."""
    head = json_bytes(body)
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(head))}
