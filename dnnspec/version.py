"""The package version, in a module of its own: modules that stamp it (the ONNX export) need not import
the package's ``__init__``, which loads the top-level API lazily from every part of dnnspec."""

__version__ = "0.1.0"
