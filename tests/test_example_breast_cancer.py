"""examples/breast_cancer_csv.py: scikit-learn's breast cancer table as a CSV with text labels, end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_breast_cancer_example_learns_and_its_three_paths_agree(tmp_path, capsys):
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import breast_cancer_csv
    finally:
        sys.path.pop(0)
    result = breast_cancer_csv.main(["--out", str(tmp_path)])
    assert result["accuracy"] > 0.95  # 113 held-out tumours; a linear model gets about 0.96
    assert result["accuracy"] == result["engine_accuracy"] == result["sklearn_accuracy"]
    out = capsys.readouterr().out
    assert "dropped column 1 (diagnosis), the label column" in out
    assert "radius_band: 3 values" in out
