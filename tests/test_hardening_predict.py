"""``predict`` reports instead of crashing: foreign ONNX models, odd input types, damaged input files."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest

from dnnspec import cli
from dnnspec.errors import CheckpointError, DataError
from dnnspec.export.predictor import Predictor, load_inputs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402 - after the skip


def write_model(path, nodes, inputs, outputs, inits=()):
    """A small ONNX model built with onnx.helper (opset 17), checked, written to ``path``."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def relu_model(path, batch, features=3, elem=TensorProto.FLOAT, op="Relu"):
    io = [helper.make_tensor_value_info(n, elem, [batch, features]) for n in ("input", "output")]
    return write_model(path, [helper.make_node(op, ["input"], ["output"])], io[:1], io[1:])


def int64_model(path):
    """int64 input (N, 3) -> float output 2 * x."""
    nodes = [helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "two"], ["output"])]
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return write_model(path, nodes, [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 3])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], [two])


def one_line(capsys, argv, code=1):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# --- the model's batch axis and input type --------------------------------------------------------


def test_fixed_batch_of_one_runs_row_by_row(tmp_path, capsys):
    path = relu_model(tmp_path / "b1.onnx", 1)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    p = Predictor(path)
    assert p.fixed_batch == 1
    np.testing.assert_array_equal(p.predict(x), np.maximum(x, 0))
    np.testing.assert_array_equal(p.predict(x, batch=1024), np.maximum(x, 0))
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_fixed_batch_not_dividing_the_rows_is_one_line(tmp_path, capsys):
    path = relu_model(tmp_path / "b2.onnx", 2)
    x = np.ones((5, 3), np.float32)
    with pytest.raises(DataError, match=r"b2\.onnx: the model's batch axis is fixed at 2, .* input holds 5, "
                                         r"not a multiple of 2"):
        Predictor(path).predict(x)
    np.testing.assert_array_equal(Predictor(path).predict(x[:4] * -1), np.zeros((4, 3), np.float32))
    np.save(tmp_path / "x.npy", x)
    assert "not a multiple of 2" in one_line(capsys, ["predict", str(path), str(tmp_path / "x.npy")])


def test_int64_input_takes_whole_floats_and_names_both_types_otherwise(tmp_path, capsys):
    path = int64_model(tmp_path / "i.onnx")
    p = Predictor(path)
    assert p.input_dtype == np.int64
    whole = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(p.predict(whole), 2 * whole)
    np.testing.assert_array_equal(p.predict(np.array([[1, 2, 3]], np.uint8)), [[2, 4, 6]])
    with pytest.raises(DataError, match=r"takes int64 inputs, but the float64 values given do not convert exactly "
                                         r"\(0\.5 in example 1\); give whole numbers from -9223372036854775808"):
        p.predict(np.array([[1.0, 2.0, 3.0], [4.0, 0.5, 6.0]]))
    with pytest.raises(DataError, match=r"\(nan in example 0\)"):
        p.predict(np.array([[np.nan, 2.0, 3.0]]))
    np.save(tmp_path / "x.npy", np.full((2, 3), 0.25, np.float32))
    err = one_line(capsys, ["predict", str(path), str(tmp_path / "x.npy")])
    assert "i.onnx takes int64 inputs, but the float32 values given" in err


def test_narrow_input_types_are_range_checked(tmp_path):
    p8 = Predictor(relu_model(tmp_path / "u8.onnx", "N", elem=TensorProto.UINT8, op="Identity"))
    np.testing.assert_array_equal(p8.predict(np.array([[0, 7, 255]])), [[0, 7, 255]])
    with pytest.raises(DataError, match=r"takes uint8 inputs, .*\(256 in example 0\); give whole numbers from 0 to"):
        p8.predict(np.array([[0, 7, 256]]))
    p16 = Predictor(relu_model(tmp_path / "f16.onnx", "N", elem=TensorProto.FLOAT16))
    np.testing.assert_array_equal(p16.predict(np.array([[1.5, -1, 2]])), np.array([[1.5, 0, 2]], np.float16))
    with pytest.raises(DataError, match=r"values beyond the float16 range \(largest 65504\)"):
        p16.predict(np.array([[1e6, 0, 0]]))


def test_any_onnxruntime_failure_is_one_line_naming_the_model(tmp_path, capsys):
    """Reshape to (-1, 7) cannot split 3 values: onnxruntime fails at run time, not at load time."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])
    path = write_model(tmp_path / "r.onnx", [helper.make_node("Reshape", ["input", "shape"], ["output"])],
                       [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["M", 7])], [shape])
    with pytest.raises(DataError, match=r"r\.onnx: onnxruntime could not run the model on input \(a \[1, 3\] "
                                         r"float32 batch\): \[ONNXRuntimeError\]"):
        Predictor(path).predict(np.ones((1, 3)))
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    assert "r.onnx: onnxruntime could not run the model on" in one_line(
        capsys, ["predict", str(path), str(tmp_path / "x.npy")])


def test_models_predict_cannot_feed(tmp_path):
    two = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    path = write_model(tmp_path / "two.onnx", [helper.make_node("Add", ["a", "b"], ["output"])], two,
                       [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])])
    with pytest.raises(CheckpointError, match=r"two\.onnx: predict runs models with one input; this one has 2 \(a,"):
        Predictor(path)
    strings = [helper.make_tensor_value_info(n, TensorProto.STRING, ["N"]) for n in ("input", "output")]
    path = write_model(tmp_path / "s.onnx", [helper.make_node("Identity", ["input"], ["output"])], strings[:1],
                       strings[1:])
    with pytest.raises(CheckpointError, match=r"input 'input' takes tensor\(string\); predict feeds numeric tensors"):
        Predictor(path)


# --- damaged input files ----------------------------------------------------------------------------


def png(width, height, idat=b""):
    """A PNG whose header claims ``width`` x ``height`` grey pixels (its data may be short)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def test_png_claiming_huge_sizes_is_refused_before_decoding(tmp_path, capsys, recwarn):
    (tmp_path / "bomb.png").write_bytes(png(100_000, 100_000))
    with pytest.raises(DataError, match=r"bomb\.png: image too large to decode \(.*\); the model expects 5x6 pixels"):
        load_inputs(tmp_path / "bomb.png", (1, 6, 5))
    (tmp_path / "big.png").write_bytes(png(10_000, 10_000))  # between Pillow's warning and its error
    with pytest.raises(DataError, match=r"big\.png: image is 10000x10000 pixels but the model expects 5x6"):
        load_inputs(tmp_path / "big.png", (1, 6, 5))
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
    (tmp_path / "short.png").write_bytes(png(5, 6, b"\x00" * 7))  # right size, data cut short
    with pytest.raises(DataError, match=r"short\.png: cannot read image"):
        load_inputs(tmp_path / "short.png", (1, 6, 5))
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, 6, 5]) for n in ("input", "output")]
    model = write_model(tmp_path / "img.onnx", [helper.make_node("Relu", ["input"], ["output"])], io_[:1], io_[1:])
    err = one_line(capsys, ["predict", str(model), str(tmp_path / "bomb.png")])
    assert "bomb.png: image too large to decode" in err


def test_damaged_input_files_are_one_line(tmp_path, capsys):
    model = relu_model(tmp_path / "m.onnx", "N")
    x = np.random.default_rng(0).normal(size=(40, 3))
    np.savez_compressed(tmp_path / "x.npz", x=x)
    raw = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(raw[: len(raw) // 2])
    np.save(tmp_path / "x.npy", x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "half.npy").write_bytes(raw[: len(raw) // 2])
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (999_999_999,)})
    (tmp_path / "huge.npy").write_bytes(head.getvalue() + raw[-64:])
    (tmp_path / "bad-idx2-ubyte").write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 10**6, 10**4))
    (tmp_path / "x.csv").write_bytes(b"\xff\xfe1,2,3\n")
    cases = {"half.npz": r"cannot read \.npz file", "half.npy": r"truncated \.npy file",
             "huge.npy": r"header claims \(999999999,\) float64", "bad-idx2-ubyte": "truncated IDX file",
             "x.csv": "cannot read CSV file"}
    for name, message in cases.items():
        err = one_line(capsys, ["predict", str(model), str(tmp_path / name)])
        assert f"{name}: " in err and re.search(message, err), err


def sample_files(x):
    """The same examples (N, 6, 5) uint8 in every format predict reads, as bytes by file name."""
    import gzip

    from PIL import Image

    def saved(save, *args, **kw):
        buf = io.BytesIO()
        save(buf, *args, **kw)
        return buf.getvalue()

    csv = "\n".join(",".join(map(str, r)) for r in x.reshape(len(x), -1)).encode()
    idx = bytes([0, 0, 8, 3]) + struct.pack(">3I", *x.shape) + x.tobytes()
    files = {"a.npy": saved(np.save, x.astype(np.float32)), "a.npz": saved(np.savez, x=x),
             "c.npz": saved(np.savez_compressed, x=x), "a.csv": csv, "a.csv.gz": gzip.compress(csv),
             "a-idx3-ubyte": idx, "a-idx3-ubyte.gz": gzip.compress(idx)}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF"):
        files[f"a.{fmt.lower()}"] = saved(Image.fromarray(x[0]).save, fmt)
    return files


def test_mutated_input_files_never_crash(tmp_path):
    """Every file truncated at 25 places and with 25 random byte edits: loads, or one DnnspecError line."""
    from dnnspec.errors import DnnspecError

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 6, 5)).astype(np.uint8)
    for name, raw in sample_files(x).items():
        cuts = [raw[:c] for c in np.linspace(0, len(raw) - 1, 25).astype(int)]
        edits = []
        for _ in range(25):
            b = np.frombuffer(raw, np.uint8).copy()
            b[rng.integers(0, len(b), 3)] = rng.integers(0, 256, 3)
            edits.append(b.tobytes())
        for mutant in cuts + edits:
            (tmp_path / name).write_bytes(mutant)
            try:
                load_inputs(tmp_path / name, (1, 6, 5))
            except DnnspecError as e:
                assert "\n" not in str(e) and name in str(e)
