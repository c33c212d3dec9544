"""A Triton Inference Server model repository for one exported model.

    REPO_DIR/<name>/config.pbtxt        platform onnxruntime_onnx, max_batch_size, I/O
    REPO_DIR/<name>/1/model.onnx        version 1

Dims leave out the batch axis (Triton adds it when ``max_batch_size > 0``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError
from .onnx_export import write_atomic

MAX_BATCH_SIZE = 1024


def triton_name(name: str) -> str:
    """A model name Triton accepts as a folder name: letters, digits, ``_``, ``-``, ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "model"


def config_pbtxt(name: str, inputs: list[tuple[str, tuple[int, ...]]], outputs: list[tuple[str, tuple[int, ...]]],
                 max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """The text of config.pbtxt; every tensor is TYPE_FP32."""

    def block(kind: str, tensors: list[tuple[str, tuple[int, ...]]]) -> list[str]:
        lines = [f"{kind} ["]
        for i, (tname, dims) in enumerate(tensors):
            sep = "," if i < len(tensors) - 1 else ""
            lines += ["  {", f'    name: "{tname}"', "    data_type: TYPE_FP32",
                      f"    dims: [ {', '.join(str(d) for d in dims)} ]", "  }" + sep]
        return lines + ["]"]

    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}",
             *block("input", inputs), *block("output", outputs), "dynamic_batching { }"]
    return "\n".join(lines) + "\n"


def write_repository(repo_dir: str | Path, name: str, onnx_bytes: bytes, inputs: list[tuple[str, tuple[int, ...]]],
                     outputs: list[tuple[str, tuple[int, ...]]], max_batch_size: int = MAX_BATCH_SIZE) -> Path:
    """Write ``repo_dir/<name>/1/model.onnx`` and ``config.pbtxt``; return the model folder."""
    repo = Path(repo_dir)
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"--triton {repo}: is a file; give a folder for the model repository")
    if not repo.parent.is_dir():
        raise UsageError(f"--triton {repo}: the folder {repo.parent} does not exist; create it first")
    name = triton_name(name)
    version = repo / name / "1"
    try:
        version.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--triton {repo}: cannot create {version} ({e.strerror})") from None
    write_atomic(version / "model.onnx", onnx_bytes)
    write_atomic(repo / name / "config.pbtxt", config_pbtxt(name, inputs, outputs, max_batch_size).encode())
    return repo / name
