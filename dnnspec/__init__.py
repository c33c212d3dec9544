"""dnnspec: a declarative language for deep neural networks, a NumPy engine and ONNX export."""

__version__ = "0.1.0"

__all__ = ["Predictor", "compile", "load"]


def __getattr__(name: str):
    """Lazy top-level API (``import dnnspec`` stays light): ``compile``, ``load``, ``Predictor``."""
    if name == "compile":
        from .engine.net import compile_net

        return compile_net
    if name == "load":
        from .checkpoint import load_net

        return load_net
    if name == "Predictor":
        from .export.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'dnnspec' has no attribute {name!r}")
