import importlib.util
import sys
from pathlib import Path

import pytest

# Let tests import the shared helpers in tests/ (gradcheck.py) by name.
sys.path.insert(0, str(Path(__file__).parent))


HAS_NUMBA = importlib.util.find_spec("numba") is not None


@pytest.fixture(params=["numpy", "fused"])
def both_paths(request, monkeypatch):
    """A test once per path: the NumPy passes, and the compiled (numba) kernels; the fused one needs numba."""
    if request.param == "fused" and not HAS_NUMBA:
        pytest.skip("numba is not installed (pip install 'dnnspec[fast]')")
    monkeypatch.setenv("DNNSPEC_FUSED", "1" if request.param == "fused" else "0")
    return request.param
