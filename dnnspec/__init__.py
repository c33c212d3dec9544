"""dnnspec: a declarative language for deep neural networks, a NumPy engine and ONNX export.

The top-level API, imported lazily (``import dnnspec`` loads neither onnx nor onnxruntime,
tqdm or matplotlib):

    net = dnnspec.compile("specs/fashion_mlp.dnn")            # a Net
    data = dnnspec.load_data("fashion-mnist", net.model)        # a checked Dataset
    net.fit(data.x_train, data.y_train, run_dir="runs/mlp")
    net = dnnspec.load("runs/mlp")                              # the run's best weights
    dnnspec.export(net, "mlp.onnx")                             # or dnnspec.export("runs/mlp")
    probs = dnnspec.Predictor("mlp.onnx").predict(data.x_test)
    report = dnnspec.evaluate("mlp.onnx", "fashion-mnist")      # accuracy, per class, confusion
"""

import types as _types

from .version import __version__ as __version__  # re-exported: dnnspec.__version__

__all__ = ["Predictor", "compile", "evaluate", "export", "load", "load_data"]


def __getattr__(name: str):
    """Lazy top-level API: ``compile``, ``load`` (dnnspec.api), ``Predictor``, ``evaluate``, ``load_data``."""
    if name in ("compile", "load"):
        from . import api

        return getattr(api, name)
    if name == "Predictor":
        from .export.predictor import Predictor

        return Predictor
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    if name == "load_data":
        from .data import load_data

        return load_data
    raise AttributeError(f"module 'dnnspec' has no attribute {name!r}")


def _export(source, path=None, **options):
    """``dnnspec.export(net_or_run, path=None, **options) -> Path``: write an ONNX model.

    ``source``: a Net, or a run folder / ``.npz`` model or checkpoint (its best weights, and
    its training summary in the metadata, as ``dnnspec export RUN_DIR``). ``path`` defaults
    to ``RUN_DIR/model.onnx`` (or the file's name with ``.onnx``). ``options``: ``opset``,
    ``fold``, ``logits_output`` (dnnspec.export.onnx_export.to_onnx).
    """
    from pathlib import Path

    from .export.onnx_export import to_onnx, write_atomic

    if hasattr(source, "params") and hasattr(source, "model"):
        if path is None:
            raise TypeError("dnnspec.export(net, path): give the .onnx path to write")
        from .dataschema import meta_entry

        options["metadata"] = {**meta_entry(source), **(options.get("metadata") or {})}  # a table's columns
        proto = to_onnx(source.model, source.params, **options)
    else:
        from .export.runs import load_source

        src = load_source(source)
        folder = Path(source)
        path = path if path is not None else (folder / "model.onnx" if folder.is_dir() else folder.with_suffix(".onnx"))
        proto = to_onnx(src.model, src.params, metadata=src.summary, source=str(src.path), **options)
    return write_atomic(path, proto.SerializeToString())


class _CallableModule(_types.ModuleType):
    """``dnnspec.export`` is both the subpackage (dnnspec.export.onnx_export, ...) and a function."""

    def __call__(self, source, path=None, **options):
        return _export(source, path, **options)

    __call__.__doc__ = _export.__doc__


# The subpackage's __init__ imports nothing, so this stays light; once imported, every later
# `import dnnspec.export.x` finds this same module object, so dnnspec.export stays callable.
from . import export as _export_package  # noqa: E402

_export_package.__class__ = _CallableModule
