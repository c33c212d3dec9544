"""Data sources refuse bad options and damaged files at once: one DataError, nothing big allocated first."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from dnnspec import cli, data, datafiles, ir
from dnnspec.data import load_data, read_csv_table, read_idx
from dnnspec.errors import DataError

MiB = 1 << 20


def vec_model(features=2, classes=3):
    return ir.model_from_layers((features,), [("dense", {"units": classes}), ("softmax", {})], train={"batch": 1})


def refused(call, *args, match):
    """Run ``call``; it must raise DataError matching ``match`` within a second, peaking under 16 MiB."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DataError, match=match) as info:
            call(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert "\n" not in str(info.value)
    return str(info.value)


# --- options of the built-in sets ------------------------------------------------------------


@pytest.mark.parametrize("source, message", [
    ("spirals:n=inf", r"spirals: option n=inf must be a whole number from 1 to 100,000,000"),
    ("spirals:n=nan", r"option n=nan must be a whole number"),
    ("spirals:n=1e12", r"option n=1e12 must be a whole number from 1 to 100,000,000"),
    ("spirals:n=0", r"option n=0 must be a whole number from 1"),
    ("spirals:noise=-0.1", r"option noise=-0.1 must be a number from 0 to 100"),
    ("spirals:noise=inf", r"option noise=inf must be a number"),
    ("spirals:classes=0", r"option classes=0 must be a whole number from 1 to 1,000"),
    ("moons:noise=nan", r"moons: option noise=nan must be a number"),
    ("moons:seed=4294967296", r"option seed=4294967296 must be a whole number from 0 to 4,294,967,295"),
    ("moons:seed=1.5", r"option seed=1.5 must be a whole number"),
    ("blobs:features=1e9", r"blobs: option features=1e9 must be a whole number from 1 to 1,000,000"),
    ("blobs:classes=-3", r"option classes=-3 must be a whole number from 1"),
    ("blobs:std=1e400", r"option std=1e400 must be a number from 0 to"),
    ("digits:seed=-1", r"digits: option seed=-1 must be a whole number"),
    ("spirals:n=3,n=4", r"option 'n' is given twice"),
    ("spirals:n=1" + "0" * 400, r"option n=10{36}\.\.\. must be a whole number"),
    ("spirals:seed=-" + "9" * 400, r"option seed=-9{36}\.\.\. must be a whole number from 0"),
    ("spirals:n=", r"bad option 'n='; write options as name=number"),
])
def test_bad_options_fail_at_once(source, message):
    refused(load_data, source, vec_model(), match=message)


@pytest.mark.parametrize("source, message", [
    ("spirals:n=20000000", r"spirals: generating n=20,000,000 points would take about 2\.2 GiB, more than the "
                           r"1 GiB a built-in set may use; use n <= 8,947,8\d\d with these options"),
    ("moons:n=1e8", r"moons: generating n=100,000,000 points would take about 11\.2 GiB"),
    ("blobs:features=100000", r"blobs: generating n=1,500 points of 100,000 features would take about 3\.5 GiB.*"
                              r"use n <= 4\d\d with these options"),
    ("blobs:features=1000000,classes=10000", r"use fewer features or classes"),
])
def test_sets_beyond_the_memory_bound_are_refused_before_allocating(source, message):
    refused(load_data, source, vec_model(), match=message)


def test_python_api_checks_its_arguments_too():
    refused(data.spirals, float("inf"), match="option n=inf must be a whole number")
    refused(data.blobs, 100, 3, 10**9, match="option features=1000000000 must be")
    refused(data.moons, 10**8, match="generating n=100,000,000 points")
    assert data.spirals(n=300.0, seed=np.int64(2)).x_train.shape == (300, 2)  # whole floats and NumPy ints


@pytest.mark.parametrize("name, kwargs, sizes", [
    ("spirals", {"n": 40000}, {"classes": 3}),
    ("spirals", {"n": 20000, "classes": 7}, {"classes": 7}),
    ("moons", {"n": 40001}, {"classes": 2}),
    ("blobs", {"n": 20000, "features": 1, "classes": 1}, {"features": 1, "classes": 1}),
    ("blobs", {"n": 5000, "features": 40, "classes": 200}, {"features": 40, "classes": 200}),
    ("blobs", {"n": 40, "features": 3000, "classes": 500}, {"features": 3000, "classes": 500}),
])
def test_generation_bytes_bound_the_measured_peak(name, kwargs, sizes):
    """The estimate the bound is checked with is at least what generating takes (tracemalloc)."""
    maker = getattr(data, name)
    maker(n=10)  # first-call set-up is not part of the set
    tracemalloc.start()
    try:
        maker(**kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = data.generation_bytes(name, kwargs["n"], **sizes)
    assert peak <= estimate < 3 * peak, (peak, estimate)


def test_train_cli_reports_bad_options_in_one_line(tmp_path, capsys):
    spec = tmp_path / "s.dnn"
    spec.write_text("network s\ninput [2]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\ntrain epochs=1 batch=4\n")
    assert cli.main(["train", str(spec), "--data", "spirals:n=nan", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "option n=nan must be a whole number" in err


# --- files: sizes checked before allocating ----------------------------------------------------


def idx_bytes(type_code, shape, payload=b""):
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_idx_header_claiming_huge_sizes(tmp_path):
    (tmp_path / "h.idx").write_bytes(idx_bytes(0x08, (4_000_000, 1000), b"abc"))
    refused(read_idx, tmp_path / "h.idx", match=r"truncated IDX file: expected 4000000000 data bytes, found 3")
    (tmp_path / "h.idx.gz").write_bytes(gzip.compress(idx_bytes(0x0E, (100_000, 100_000), b"abc")))
    refused(read_idx, tmp_path / "h.idx.gz",
            match=r"h\.idx\.gz: its IDX header claims 80,000,000,000 data bytes, more than a \d+-byte gzip file")


def test_idx_gzip_with_corrupt_data_is_caught_by_its_crc(tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    good = bytearray(gzip.compress(idx_bytes(0x08, (50_000,), payload)))
    good[len(good) // 2] ^= 0xFF  # random bytes are stored, not compressed: only the CRC sees this
    (tmp_path / "c-idx1-ubyte.gz").write_bytes(bytes(good))
    refused(read_idx, tmp_path / "c-idx1-ubyte.gz", match=r"c-idx1-ubyte\.gz: cannot read IDX file \(CRC check")


def npy_header(shape, descr="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npz_member_claiming_huge_shape(tmp_path):
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", npy_header((10**6, 10**6)) + bytes(64))
        z.writestr("y.npy", npy_header((10**6,)) + bytes(64))
    refused(load_data, str(tmp_path / "huge.npz"), vec_model(),
            match=r"huge\.npz: array x claims \(1000000, 1000000\) float64 \(8,000,000,000,000 bytes\) but holds 64")


def test_npz_damaged_in_every_way_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "c.npz", x=rng.normal(size=(300, 2)), y=np.zeros(300))
    raw = (tmp_path / "c.npz").read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    flipped[len(raw) // 3 + 1] ^= 0x55
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    (tmp_path / "half.npz").write_bytes(raw[: len(raw) // 2])
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    (tmp_path / "npy.npz").write_bytes((tmp_path / "a.npy").read_bytes())  # a .npy under a .npz name
    for name in ("flipped.npz", "half.npz", "npy.npz"):
        refused(load_data, str(tmp_path / name), vec_model(), match=rf"{name}: cannot read \.npz file")
    np.savez(tmp_path / "keys.npz", inputs=np.zeros((3, 2)), labels=np.zeros(3))
    refused(load_data, str(tmp_path / "keys.npz"), vec_model(),
            match=r"missing array\(s\) x, y; .* \(found inputs, labels\)")


def test_csv_gzip_corrupt_is_one_line(tmp_path):
    rows = "\n".join(",".join(f"{v:.6f}" for v in r) for r in np.random.default_rng(0).normal(size=(3000, 3)))
    raw = gzip.compress(rows.encode(), mtime=0)
    for at, error in ((12, "invalid"), (len(raw) // 2, "")):  # a broken deflate block (zlib.error), a bad CRC
        broken = bytearray(raw)
        broken[at] ^= 0xFF
        (tmp_path / "d.csv.gz").write_bytes(bytes(broken))
        refused(read_csv_table, tmp_path / "d.csv.gz", match=rf"d\.csv\.gz: cannot read CSV file \(.*{error}")


def test_files_larger_than_memory_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(datafiles, "physical_memory", lambda: 1000)
    np.save(tmp_path / "x.npy", np.zeros(200))
    refused(data.read_npy, tmp_path / "x.npy", match=r"x\.npy: the array \(200,\) float64 would take 0\.0 GiB, "
                                                     r"more than this machine's 0\.0 GiB of memory")
    (tmp_path / "t.csv").write_text("1,2\n" * 100)
    refused(read_csv_table, tmp_path / "t.csv", match=r"t\.csv: reading this CSV file would take")


def test_csv_label_columns_named_twice_or_leaving_no_features(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,t\n1,2,0\n3,4,1\n")
    refused(load_data, f"{p}:t,2", vec_model(), match=r"t\.csv: ':t,2' names a label column twice")
    refused(load_data, f"{p}:a,b,t", vec_model(), match=r"makes every column a label, which leaves no features")
