"""The models a server holds: ONNX files found on disk, each in an onnxruntime session.

Three layouts are accepted (paths come only from the command line, never from requests):

- a single ``MODEL.onnx``: served as ``MODEL``, version ``1``;
- a directory of ``*.onnx`` files: each served under its file name, version ``1``;
- a Triton-style repository (what ``dnnspec export --triton`` writes)::

      REPO/<name>/config.pbtxt
      REPO/<name>/<version>/model.onnx      (version: a positive integer)

  every version is served; a URL without a version gets the highest one. The folder
  of one such model (``REPO/<name>``) can be given alone.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UsageError
from ..export.predictor import providers_for
from .protocol import ORT_TYPES, InferenceError, TensorSpec

PLATFORM = "onnxruntime_onnx"


@dataclass
class Stats:
    """Counters in the shape of Triton's statistics extension."""

    inference_count: int = 0  # rows run
    execution_count: int = 0  # session.run calls
    last_inference_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, rows: int) -> None:
        with self.lock:
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)


@dataclass
class ServedModel:
    """One version of one model: its session, protocol signature, class names, counters."""

    name: str
    version: str
    path: Path
    session: object  # onnxruntime.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    class_names: list[str] | None = None
    stats: Stats = field(default_factory=Stats)

    @property
    def batchable(self) -> bool:
        """True when every input has a free first (batch) dimension."""
        return all(s.shape and s.shape[0] == -1 for s in self.inputs)

    @functools.cached_property
    def label_bytes(self) -> int:
        """The longest class label of an answer as JSON, quotes included (class indices without names)."""
        if not self.class_names:
            return 22  # "18446744073709551615"
        return max(len(json.dumps(name)) for name in self.class_names)

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def scores_output(self) -> str:
        """The output top-k reads: ``probabilities`` when there is one, else the first."""
        names = self.output_names
        return "probabilities" if "probabilities" in names else names[0]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ``session.run`` over all outputs; thread-safe (onnxruntime sessions are)."""
        rows = next(iter(inputs.values())).shape[0]
        values = self.session.run(None, inputs)
        self.stats.add(rows)
        return dict(zip(self.output_names, values))

    def metadata(self, versions: list[str]) -> dict:
        """The protocol's model metadata response."""
        meta = {"name": self.name, "versions": versions, "platform": PLATFORM,
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}
        if self.class_names is not None:
            meta["parameters"] = {"class_names": self.class_names}
        return meta


@dataclass
class Repository:
    """Every served model: ``models[name][version]``."""

    models: dict[str, dict[str, ServedModel]]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model ``name`` at ``version`` (highest when None); 404 InferenceError if absent."""
        versions = self.models.get(name)
        if versions is None:
            raise InferenceError(f"unknown model '{name}'; this server has {sorted(self.models)}", 404)
        if version is None:
            return versions[latest(versions)]
        if version not in versions:
            raise InferenceError(f"model '{name}' has no version '{version}'; it has {sorted(versions, key=int)}",
                                 404)
        return versions[version]

    def versions(self, name: str) -> list[str]:
        return sorted(self.models[name], key=int)

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]


def latest(versions: dict[str, ServedModel]) -> str:
    return max(versions, key=int)


def find_models(path: str | Path) -> list[tuple[str, str, Path]]:
    """(name, version, file) for every model at ``path``; UsageError when there is none."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".onnx":
            raise UsageError(f"{path}: not an .onnx file")
        return [(path.stem, "1", path)]
    found = _triton_versions(path)  # the folder of one Triton model
    if not found:
        found = [(f.stem, "1", f) for f in sorted(path.glob("*.onnx")) if f.is_file()]
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            found += _triton_versions(sub)
    seen: set[tuple[str, str]] = set()
    for name, version, _ in found:
        if (name, version) in seen:
            raise UsageError(f"{path}: model '{name}' version {version} is both a file and a repository folder")
        seen.add((name, version))
    if not found:
        raise UsageError(f"{path}: no models found (expected *.onnx files or <name>/<version>/model.onnx)")
    return found


def _triton_versions(folder: Path) -> list[tuple[str, str, Path]]:
    """Versions of one Triton model folder: numeric subfolders holding the model file."""
    filename = _config_value(folder / "config.pbtxt", "default_model_filename") or "model.onnx"
    return [(folder.name, str(int(v.name)), v / filename) for v in sorted(folder.iterdir(), key=lambda p: p.name)
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / filename).is_file()]


def _config_value(config: Path, key: str) -> str | None:
    """A top-level string field of a Triton config.pbtxt (text protobuf), or None."""
    if not config.is_file():
        return None
    m = re.search(rf'^\s*{key}\s*:\s*"([^"]*)"', config.read_text(errors="replace"), re.MULTILINE)
    return m.group(1) if m else None


def load_model(name: str, version: str, path: Path, providers: list[str], threads: int = 1) -> ServedModel:
    """Open ``path`` in an onnxruntime session; CheckpointError if it is not a usable model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning threads would steal the event loop's CPU between requests.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load the ONNX model: {first}") from None
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in session.get_providers():
        raise UsageError("--provider cuda: onnxruntime-gpu is installed but found no usable CUDA GPU")
    return ServedModel(name, version, path, session, _specs(session.get_inputs(), path, strings=True),
                       _specs(session.get_outputs(), path), _class_names(session, path))


def _specs(args, path: Path, strings: bool = False) -> list[TensorSpec]:
    """Protocol specs of a session's inputs or outputs; BYTES (string) tensors only where ``strings``
    (inputs: a table model takes its text columns as strings)."""
    specs = []
    for a in args:
        if a.type not in ORT_TYPES or (ORT_TYPES[a.type] == "BYTES" and not strings):
            raise CheckpointError(f"{path}: tensor '{a.name}' has type {a.type}, which the server does not support")
        specs.append(TensorSpec(a.name, ORT_TYPES[a.type], tuple(d if isinstance(d, int) else -1 for d in a.shape)))
    return specs


def _class_names(session, path: Path) -> list[str] | None:
    """The ``class_names`` metadata property (a JSON list of strings), if the model has one."""
    raw = session.get_modelmeta().custom_metadata_map.get("class_names")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        print(f"dnnspec serve: warning: {path}: ignoring class_names, not a JSON list of strings", file=sys.stderr)
        return None
    return names


def load_repository(path: str | Path, provider: str = "cpu", threads: int = 1) -> Repository:
    """Find and open every model at ``path`` (see the module docstring for layouts)."""
    providers = providers_for(provider)
    models: dict[str, dict[str, ServedModel]] = {}
    for name, version, file in find_models(path):
        models.setdefault(name, {})[version] = load_model(name, version, file, providers, threads)
    return Repository(models)
