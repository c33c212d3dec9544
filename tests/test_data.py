"""Data sources and their checks against the model (dnnspec/data.py)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from dnnspec import data, ir
from dnnspec.data import Dataset, check_data, load_data, read_idx
from dnnspec.errors import DataError


def vec_model(features=4, classes=3, batch=2):
    return ir.model_from_layers((features,), [("dense", {"units": classes}), ("softmax", {})],
                                train={"batch": batch})


def img_model(shape=(1, 28, 28), classes=10, batch=2):
    return ir.model_from_layers(shape, [("flatten", {}), ("dense", {"units": classes}), ("softmax", {})],
                                train={"batch": batch})


def reg_model(features=3, targets=2):
    return ir.model_from_layers((features,), [("dense", {"units": targets})], loss="mse", train={"batch": 1})


def write_idx(path, arr):
    """Reference IDX writer straight from the format: magic 0,0,type,ndim, big-endian dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = head + arr.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


# --- .npz ------------------------------------------------------------------------------


def test_npz_train_and_test_reshaped_to_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:4], y_test=y[:4])
    d = load_data(str(tmp_path / "d.npz"), img_model())
    assert d.x_train.shape == (10, 1, 28, 28) and d.x_train.dtype == np.uint8
    np.testing.assert_array_equal(d.x_train[:, 0], x)
    assert d.y_train.dtype == np.int64 and d.x_test.shape == (4, 1, 28, 28)
    flat = load_data(str(tmp_path / "d.npz"), img_model(shape=(784,)))
    np.testing.assert_array_equal(flat.x_train, x.reshape(10, 784))


def test_uint8_kept_without_copy():
    x = np.zeros((6, 784), np.uint8)
    d = check_data(Dataset(x, np.zeros(6, np.int64), path="mem"), img_model())
    assert d.x_train.dtype == np.uint8 and np.shares_memory(d.x_train, x)


def test_float64_becomes_float32_and_nhwc_becomes_nchw():
    x = np.arange(4 * 5 * 5 * 3, dtype=np.float64).reshape(4, 5, 5, 3)
    d = check_data(Dataset(x, np.zeros(4), path="mem"), img_model(shape=(3, 5, 5)))
    assert d.x_train.dtype == np.float32
    np.testing.assert_array_equal(d.x_train, x.transpose(0, 3, 1, 2))


def test_npz_missing_arrays_and_corrupt(tmp_path):
    np.savez(tmp_path / "a.npz", inputs=np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"a\.npz: missing array\(s\) x, y"):
        load_data(str(tmp_path / "a.npz"), vec_model())
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 4)), y=np.zeros(4), x_test=np.zeros((2, 4)))
    with pytest.raises(DataError, match="only one of x_test and y_test"):
        load_data(str(tmp_path / "b.npz"), vec_model())
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"c\.npz: cannot read \.npz file"):
        load_data(str(tmp_path / "c.npz"), vec_model())
    with pytest.raises(DataError, match="only .csv files have"):
        load_data(f"{tmp_path / 'b.npz'}:label", vec_model())


# --- .csv ------------------------------------------------------------------------------


def test_csv_header_label_by_name_index_and_default(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("label,a,b,c,d\n1,0.5,1,2,3\n2,4,5,6,7\n0,8,9,10,11\n")
    d = load_data(f"{p}:label", vec_model())
    np.testing.assert_array_equal(d.y_train, [1, 2, 0])
    np.testing.assert_allclose(d.x_train, [[0.5, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    d0 = load_data(f"{p}:0", vec_model())
    np.testing.assert_array_equal(d0.y_train, d.y_train)
    q = tmp_path / "n.csv"
    q.write_text("0.5,1,2,3,1\n4,5,6,7,2\n")
    d2 = load_data(str(q), vec_model())
    np.testing.assert_array_equal(d2.y_train, [1, 2])
    assert d2.x_train.shape == (2, 4)


def test_csv_regression_targets_by_name(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("x1,t1,x2,x3,t2\n1,10,2,3,20\n4,40,5,6,50\n")
    d = load_data(f"{p}:t1,t2", reg_model())
    np.testing.assert_allclose(d.y_train, [[10, 20], [40, 50]])
    np.testing.assert_allclose(d.x_train, [[1, 2, 3], [4, 5, 6]])


def test_csv_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,c,d,label\n1,2,3,4,0\n")
    with pytest.raises(DataError, match="no column named 'target' .columns are a, b, c, d, label"):
        load_data(f"{p}:target", vec_model(batch=1))
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3,4,0\n1,2,x,4,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 2, column 3: 'x' is not a finite number, but 50% of this "
                                         r"column's cells are numbers"):
        load_data(str(bad), vec_model())
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_data(str(empty), vec_model())


# --- IDX -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_and_pair(tmp_path, suffix):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 9], np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y)
    d = load_data(str(tmp_path), img_model())
    np.testing.assert_array_equal(d.x_train[:, 0], x)
    np.testing.assert_array_equal(d.y_train, y)
    assert d.x_test is None
    pair = f"{tmp_path}/train-images-idx3-ubyte{suffix},{tmp_path}/train-labels-idx1-ubyte{suffix}"
    np.testing.assert_array_equal(load_data(pair, img_model()).y_train, y)


def test_idx_big_endian_floats(tmp_path):
    a = np.linspace(-1, 1, 12).astype(">f4").reshape(3, 4)
    write_idx(tmp_path / "f.idx", a)
    got = read_idx(tmp_path / "f.idx")
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, a.astype(np.float32))


def test_idx_corrupt_and_truncated(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "x.idx")
    write_idx(tmp_path / "y.idx", np.zeros((4, 3), np.uint8))
    (tmp_path / "y.idx").write_bytes((tmp_path / "y.idx").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated IDX file: expected 12 data bytes, found 7"):
        read_idx(tmp_path / "y.idx")
    (tmp_path / "z.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "z.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither an image folder .* nor an IDX folder"):
        load_data(str(tmp_path / "empty"), img_model())


# --- built-in sets -----------------------------------------------------------------------


def test_spirals_follow_the_cs231n_formula():
    d = data.spirals(n=3000, noise=0.2, seed=3)
    x, y = d.x_train.astype(np.float64), d.y_train
    assert x.shape == (3000, 2) and d.x_test.shape == (750, 2)
    assert set(np.bincount(np.concatenate([y, d.y_test]))) == {1250}
    r = np.hypot(x[:, 0], x[:, 1])
    assert r.max() <= 1.0 + 1e-6
    # x = r sin t, y = r cos t with t = 4j + 4r + noise: the wrapped residual is the noise.
    t = np.arctan2(x[:, 0], x[:, 1])
    resid = np.angle(np.exp(1j * (t - 4 * y - 4 * r)))
    keep = r > 0.05
    assert abs(resid[keep].std() - 0.2) < 0.02 and abs(resid[keep].mean()) < 0.02


def test_builtins_are_seeded_and_take_options():
    m = vec_model(features=2)
    a, b = load_data("spirals:n=300,seed=5", m), load_data("spirals:n=300,seed=5", m)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, load_data("spirals:n=300,seed=6", m).x_train)
    assert a.x_train.shape == (300, 2) and a.x_test.shape == (75, 2)


def test_moons_lie_on_their_half_circles():
    d = data.moons(n=400, noise=0.0, seed=0)
    x, y = d.x_train.astype(np.float64), d.y_train
    np.testing.assert_allclose(np.hypot(x[y == 0, 0], x[y == 0, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(x[y == 1, 0] - 1, x[y == 1, 1] - 0.5), 1.0, atol=1e-6)
    assert (x[y == 0, 1] >= -1e-6).all() and (x[y == 1, 1] <= 0.5 + 1e-6).all()


def test_blobs_spread_matches_std():
    d = data.blobs(n=6000, classes=4, features=3, std=0.5, seed=2)
    x, y = d.x_train.astype(np.float64), d.y_train
    spread = np.concatenate([x[y == k] - x[y == k].mean(0) for k in range(4)])
    assert abs(spread.std() - 0.5) < 0.02 and x.shape == (6000, 3)


def test_digits_match_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    d = load_data("digits", img_model(shape=(1, 8, 8)))
    assert len(d.x_train) + len(d.x_test) == len(sk.images)
    i = 7  # every loaded image is one of scikit-learn's, with its label
    match = np.flatnonzero((sk.images.reshape(len(sk.images), -1) == d.x_train[i].reshape(-1)).all(1))
    assert sk.target[match[0]] == d.y_train[i]


def test_fashion_mnist_from_the_debian_package():
    if not data.Path(data.FASHION_SYSTEM_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    d = load_data("fashion-mnist", img_model())
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (10000, 1, 28, 28)
    assert (np.bincount(d.y_train) == 6000).all() and (np.bincount(d.y_test) == 1000).all()
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"


def test_fashion_mnist_from_data_dir_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("DNNSPEC_DATA", raising=False)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_data("fashion-mnist", img_model())
    sub = tmp_path / "fashion-mnist"
    sub.mkdir()
    write_idx(sub / "train-images-idx3-ubyte.gz", np.full((3, 28, 28), 7, np.uint8))
    write_idx(sub / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8))
    d = load_data("fashion-mnist", img_model(), data_dir=tmp_path)
    assert d.x_train.shape == (3, 1, 28, 28) and d.class_names[1] == "Trouser"
    monkeypatch.setenv("DNNSPEC_DATA", str(sub))
    assert load_data("fashion-mnist", img_model()).y_train.tolist() == [1, 2, 3]


# --- source names ----------------------------------------------------------------------


@pytest.mark.parametrize("source, message", [
    ("spiral", "spiral: unknown data source; did you mean 'spirals'"),
    ("fashion", "did you mean 'fashion-mnist'"),
    ("nope/data.npz", "nope/data.npz: data file not found"),
    ("spirals:n=abc", "option n=abc must be a whole number from 1 to 100,000,000"),
    ("spirals:n", "bad option 'n'; write options as name=number"),
    ("spirals:width=3", "unknown option 'width'; spirals takes n, noise, seed"),
    ("moons:n=2.5", "option n=2.5 must be a whole number from 1 to"),
    ("fashion-mnist:n=5", "fashion-mnist takes no options"),
])
def test_bad_source_names(source, message):
    with pytest.raises(DataError, match=message):
        load_data(source, vec_model(features=2))


def test_no_source_at_all():
    with pytest.raises(DataError, match="no data source: pass --data SOURCE"):
        load_data(None, vec_model())


def test_relative_path_from_spec_folder(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4)), y=np.zeros(4))
    m = vec_model()
    m = ir.Model(**{**{f: getattr(m, f) for f in m.__dataclass_fields__}, "path": str(tmp_path / "s.dnn")})
    monkeypatch.chdir(tmp_path.parent)
    assert load_data("d.npz", m).x_train.shape == (4, 4)


# --- checks against the model ----------------------------------------------------------

def mem(x, y, **kw):
    return Dataset(np.asarray(x), np.asarray(y), path="data.npz", **kw)


@pytest.mark.parametrize("dataset, model, message", [
    (mem(np.zeros((4, 5)), np.zeros(4)), vec_model(),
     r"data\.npz: examples have 5 features; the spec says input \[4\]: write input \[5\]$"),
    (mem(np.zeros((4, 32, 32)), np.zeros(4)), img_model(),
     r"images are 32×32 \(grey; 1,024 values\); the spec says image\[1, 28, 28\]: write image\[1, 32, 32\]$"),
    (mem(np.zeros((4, 4)), np.zeros(3)), vec_model(), "x has 4 examples but y has 3 labels"),
    (mem(np.r_[np.zeros((2, 4)), [[0, np.nan, 0, 0]]], np.zeros(3)), vec_model(),
     "x holds NaN or inf .first in example 2"),
    (mem(np.r_[np.zeros((2, 4)), [[0, np.inf, 0, 0]]], np.zeros(3)), vec_model(), "NaN or inf"),
    (mem(np.zeros((3, 4)), [0, 3, 1]), vec_model(), r"the data has 3 classes \(0, 1, 3\); the spec says classes 3 "
     r"\(labels are class indices 0..2; label 3 at example 1\)"),
    (mem(np.zeros((3, 4)), [0, -1, 1]), vec_model(), r"the data has 3 classes \(-1, 0, 1\).*label -1 at example 1"),
    (mem(np.zeros((3, 4)), [0, 1, 2, 0][:3]), vec_model(classes=2),
     r"the data has 3 classes \(0, 1, 2\); the spec says classes 2"),
    (mem(np.zeros((3, 4)), [0.0, 1.5, 1.0]), vec_model(), "label 1.5 at example 1 is not a whole number"),
    (mem(np.zeros((3, 4)), np.zeros((3, 3))), vec_model(), r"labels have shape \(3, 3\); expected class indices"),
    (mem(np.zeros((3, 4)), ["a", "b", "c"]), vec_model(), "labels hold <U1 values"),
    (mem(np.zeros((3, 3)), np.zeros((3, 3))), reg_model(), "targets have width 3, the spec expects 2 target"),
    (mem(np.zeros((3, 4)), np.zeros(3)), vec_model(batch=8),
     "only 3 training examples, fewer than one batch of 8"),
    (mem(np.zeros((4, 4)), np.zeros(4), x_test=np.zeros((2, 4)), y_test=np.array([0, 7])), vec_model(),
     r"the test split has 2 classes \(0, 7\); the spec says classes 3 .*label 7 at example 1"),
    (mem(np.zeros((4, 4)), np.zeros(4), x_test=np.zeros((2, 5)), y_test=np.zeros(2)), vec_model(),
     r"test examples have 5 features; the spec says input \[4\]"),
    (mem(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4)), img_model(shape=(1, 32, 32)),
     r"images are 32×32×3 \(channels last; 3,072 values\); the spec says image\[1, 32, 32\]: write image\[3, 32, 32\]"),
    (mem(np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4)), img_model(shape=(1, 32, 32)),
     r"images are 3×32×32 \(channels first; .*\); the spec says image\[1, 32, 32\]: write image\[3, 32, 32\]"),
    (mem(np.zeros((4, 28, 28), np.uint8), np.zeros(4)), vec_model(features=100),
     r"images are 28×28 \(grey; 784 values\); the spec says input \[100\]: write input image\[1, 28, 28\]"),
])
def test_every_check_has_its_message(dataset, model, message):
    with pytest.raises(DataError, match=message):
        check_data(dataset, model)


def test_checks_accept_good_labels():
    d = check_data(mem(np.zeros((3, 4)), np.array([[0.0], [2.0], [1.0]])), vec_model())
    assert d.y_train.dtype == np.int64 and d.y_train.tolist() == [0, 2, 1]
    r = check_data(mem(np.zeros((3, 3)), np.ones((3, 2), np.float64)), reg_model())
    assert r.y_train.dtype == np.float32 and r.y_train.shape == (3, 2)
    one = check_data(mem(np.zeros((3, 3)), np.ones(3)), reg_model(targets=1))
    assert one.y_train.shape == (3, 1)


def test_search_workers_read_each_builtin_set_once_and_read_only(monkeypatch):
    """data.keep_builtins (search workers): the same arrays for the same set and options, read-only, so no
    trial can change the next one's data; other options are another entry; without it, fresh arrays."""
    model = ir.model_from_layers((2,), [("dense", {"units": 3}), ("softmax", {})])
    fresh = [data.read_source("blobs", model) for _ in range(2)]
    assert fresh[0].x_train is not fresh[1].x_train and fresh[0].x_train.flags.writeable
    monkeypatch.setattr(data, "_kept", None)
    data.keep_builtins()
    a, b = data.read_source("blobs", model), data.read_source("blobs", model)
    assert a is b and not a.x_train.flags.writeable and not a.y_train.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a.x_train[0, 0] = 1.0
    assert data.read_source("blobs:n=300", model) is not a
    np.testing.assert_array_equal(a.x_train, fresh[0].x_train)
