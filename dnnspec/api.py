"""The top-level Python API's entry points into the engine: ``dnnspec.compile`` and ``dnnspec.load``.

    net = dnnspec.compile("specs/fashion_mlp.dnn")   # a spec file, spec text or an ir.Model -> Net
    net = dnnspec.load("runs/mlp")                   # a run folder, saved model or checkpoint -> Net

The one module that joins the front end (text -> IR), the checkpoints ((model, arrays) on
disk) and the engine (IR -> Net); none of those three imports another's upper side, so
the data flows one way (docs/architecture.md). ``dnnspec/__init__.py`` exposes these lazily.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import checkpoint, dataschema, frontend, ir
from .engine.net import Net


def compile(path_or_text: Any, dtype: Any = np.float32, seed: int | None = None) -> Net:  # noqa: A001
    """``dnnspec.compile``: a Net from an ``ir.Model``, a ``.dnn`` path, or spec text.

    A ``pathlib.Path``, or a one-line string naming an existing file or ending in
    ``.dnn``, is read with ``frontend.load``; any other string is parsed as spec text.
    """
    if isinstance(path_or_text, ir.Model):
        return Net(path_or_text, dtype=dtype, seed=seed)
    if isinstance(path_or_text, os.PathLike):
        return Net(frontend.load(os.fspath(path_or_text)), dtype=dtype, seed=seed)
    text = str(path_or_text)
    if "\n" not in text and (text.strip().endswith(".dnn") or os.path.isfile(text)):
        return Net(frontend.load(text), dtype=dtype, seed=seed)
    return Net(frontend.parse(text), dtype=dtype, seed=seed)


def load(path: str | os.PathLike, dtype: Any = None) -> Net:
    """``dnnspec.load``: a Net rebuilt from a file of ``Net.save``, a training checkpoint or a run folder.

    From a checkpoint file, the weights of its last epoch are loaded. A run folder gives
    the network ``dnnspec export RUN_DIR`` exports: its ``best.npz`` (else a saved model,
    else ``checkpoint.npz`` with its best weights when it has them). ``dtype`` defaults to the saved one.
    """
    saved = checkpoint.load_model(path)
    net = Net(saved.model, dtype=dtype or saved.dtype)
    checkpoint.restore_params(net.params, saved.params, str(saved.path), prefix="")
    return dataschema.attach(net, dataschema.from_meta(saved.meta))  # class names, a table's columns


__all__ = ["compile", "load"]
