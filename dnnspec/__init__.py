"""dnnspec: a declarative language for deep neural networks, a NumPy engine and ONNX export."""

__version__ = "0.1.0"
