"""Parameter initialisation: one variance-scaling function and the lecture's presets.

With ``n = fan(n_in, n_out)`` where ``fan`` is ``avg`` ((n_in+n_out)/2, the lecture's
choice), ``in`` (n_in) or ``out`` (n_out):

    normal:   w ~ N(0, scale / n)
    uniform:  w ~ U(-r, r),  r = sqrt(3 * scale / n)      (same variance r^2/3)

=============== ===== ======================================================
preset          scale with fan=avg (the lecture)
=============== ===== ======================================================
xavier_normal   1     var = 2 / (n_in + n_out)
xavier_uniform  1     r = sqrt(6 / (n_in + n_out))
he_normal       2     var = 4 / (n_in + n_out)   (fan=in: 2 / n_in, Kaiming)
he_uniform      2     r = sqrt(12 / (n_in + n_out))
lecun_normal    1     var = 1 / n_in   (default fan=in)
lecun_uniform   1     r = sqrt(3 / n_in)
=============== ===== ======================================================

Draws are made in float64 and cast, so a float32 and a float64 network built from
the same seed start from the same weights (up to rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import ParamSpec

# preset -> (scale, distribution)
PRESETS: dict[str, tuple[float, str]] = {
    "xavier_normal": (1.0, "normal"),
    "xavier_uniform": (1.0, "uniform"),
    "he_normal": (2.0, "normal"),
    "he_uniform": (2.0, "uniform"),
    "lecun_normal": (1.0, "normal"),
    "lecun_uniform": (1.0, "uniform"),
}


def fan_value(mode: str, fan_in: int, fan_out: int) -> float:
    """The ``n`` of the variance ``scale / n``: (n_in+n_out)/2, n_in or n_out."""
    if mode == "avg":
        return (fan_in + fan_out) / 2.0
    if mode == "in":
        return float(fan_in)
    if mode == "out":
        return float(fan_out)
    raise ValueError(f"unknown fan mode {mode!r}; expected avg, in or out")


def variance_scaling(shape: tuple[int, ...], rng: np.random.Generator, *, scale: float = 1.0,
                     mode: str = "avg", distribution: str = "normal", fan_in: int, fan_out: int,
                     dtype: Any = np.float32) -> np.ndarray:
    """Zero-mean weights of variance ``scale / fan_value(mode)``, normal or uniform."""
    n = max(fan_value(mode, fan_in, fan_out), 1.0)
    var = scale / n
    if distribution == "normal":
        w = rng.normal(0.0, np.sqrt(var), size=shape)
    elif distribution == "uniform":
        r = np.sqrt(3.0 * var)
        w = rng.uniform(-r, r, size=shape)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; expected normal or uniform")
    return w.astype(dtype, copy=False)


def init_param(spec: ParamSpec, rng: np.random.Generator, dtype: Any = np.float32) -> np.ndarray:
    """A fresh array for one parameter, as its ``ParamSpec.init`` says.

    Presets go through :func:`variance_scaling`; ``normal`` is N(0, spec.std^2),
    ``uniform`` is U(-spec.limit, spec.limit); ``zeros``, ``ones`` and ``const``
    (``spec.value``, for learned alphas) draw nothing from ``rng``.
    """
    shape = tuple(spec.shape)
    if spec.init in PRESETS:
        scale, dist = PRESETS[spec.init]
        mode = spec.fan
        if mode == "auto":
            mode = "in" if spec.init.startswith("lecun") else "avg"
        return variance_scaling(shape, rng, scale=scale, mode=mode, distribution=dist,
                                fan_in=spec.fan_in, fan_out=spec.fan_out, dtype=dtype)
    if spec.init == "normal":
        return rng.normal(0.0, spec.std, size=shape).astype(dtype, copy=False)
    if spec.init == "uniform":
        return rng.uniform(-spec.limit, spec.limit, size=shape).astype(dtype, copy=False)
    if spec.init == "zeros":
        return np.zeros(shape, dtype=dtype)
    if spec.init == "ones":
        return np.ones(shape, dtype=dtype)
    if spec.init == "const":
        return np.full(shape, spec.value, dtype=dtype)
    raise ValueError(f"parameter {spec.name}: unknown init {spec.init!r}")
