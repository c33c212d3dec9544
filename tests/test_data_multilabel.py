"""Multi-label data (targets N with sigmoid and binary_cross_entropy): labels must be 0 or 1, said in one line."""

from __future__ import annotations

import numpy as np
import pytest

from dnnspec import frontend
from dnnspec.data import load_data
from dnnspec.errors import DataError

SPEC = """input [3]
targets 2
layers {
  dense 2
  sigmoid
}
loss binary_cross_entropy
train batch=4
"""

FIX = ("a multi-label spec (targets 2 with binary_cross_entropy) takes 0 (no) or 1 (yes) per label: write 0/1 "
       "labels, or use loss mse (with no sigmoid) for numeric targets")


def arrays(n=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 3)).astype(np.float32), rng.integers(0, 2, (n, 2)).astype(np.float32)


def test_yes_no_labels_are_accepted_as_they_are(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "tags.npz", x=x, y=y)
    data = load_data(str(tmp_path / "tags.npz"), frontend.parse(SPEC))
    assert np.array_equal(data.y_train, y)


def test_an_npz_label_that_is_not_0_or_1_names_the_example_and_output(tmp_path):
    x, y = arrays()
    y[5, 1] = 0.5
    np.savez(tmp_path / "tags.npz", x=x, y=y)
    with pytest.raises(DataError) as info:
        load_data(str(tmp_path / "tags.npz"), frontend.parse(SPEC))
    assert str(info.value) == f"{tmp_path / 'tags.npz'}: label 0.5 at example 5, output 1 is not 0 or 1; {FIX}"


def test_a_csv_label_that_is_not_0_or_1_names_the_row_and_column(tmp_path):
    x, y = arrays()
    y[2, 0] = 3
    rows = ["a,b,c,sunny,windy"] + [",".join(f"{v:g}" for v in (*xi, *yi)) for xi, yi in zip(x, y)]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        load_data(str(tmp_path / "tags.csv"), frontend.parse(SPEC))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'tags.csv'}: row 4, column 4 (sunny): label 3 is not 0 or 1; {FIX}; "
                          f"the label is column 4 (sunny), column 5 (windy)")
    assert "\n" not in msg


def test_regression_targets_stay_free_numbers(tmp_path):
    x, y = arrays()
    y[5, 1] = 0.5
    np.savez(tmp_path / "t.npz", x=x, y=y)
    spec = SPEC.replace("  sigmoid\n", "").replace("binary_cross_entropy", "mse")
    assert load_data(str(tmp_path / "t.npz"), frontend.parse(spec)).y_train[5, 1] == 0.5
