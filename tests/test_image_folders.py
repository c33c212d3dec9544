"""Image folders (dnnspec/images.py, data.py) end to end: PNG and JPEG files in three classes, decoded once
in parallel and cached, checked against Pillow decoding each file itself; train, export, predict, evaluate."""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dnnspec import frontend, images, ir
from dnnspec.cli import main
from dnnspec.data import load_data
from dnnspec.errors import DataError

Image = pytest.importorskip("PIL.Image")
CLASSES = ("circle", "square", "stripes")
SIZE = 8


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNSPEC_CACHE", str(tmp_path / "cache"))


def draw(k: int, i: int, size=(SIZE, SIZE)) -> np.ndarray:
    """A (H, W, 3) uint8 picture of class k: one bright channel, seeded noise."""
    rng = np.random.default_rng(100 * k + i)
    img = rng.integers(0, 60, (size[1], size[0], 3))
    img[..., k] += 180
    return img.astype(np.uint8)


def make_folder(root: Path, splits=(("train", 6), ("test", 3)), corrupt: bool = False) -> Path:
    """root/<split>/<class>/<i>.png|.jpg: PNG for odd i, JPEG for even i."""
    for split, n in splits:
        for k, name in enumerate(CLASSES):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw(k, i)).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    if corrupt:
        (root / splits[0][0] / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def img_model(shape=(3, SIZE, SIZE), classes=3, names=(), batch=2):
    m = ir.model_from_layers(shape, [("flatten", {}), ("dense", {"units": classes}), ("softmax", {})],
                             train={"batch": batch})
    return replace(m, task=replace(m.task, class_names=tuple(names))) if names else m


def pillow_reference(files, mode="RGB") -> np.ndarray:
    """Each file decoded by Pillow on its own, as (N, C, H, W)."""
    out = []
    for f in files:
        with Image.open(f) as img:
            a = np.asarray(img.convert(mode))
        out.append(a.reshape(*a.shape[:2], -1).transpose(2, 0, 1))
    return np.stack(out)


def listed(root: Path, split: str) -> list[Path]:
    return [f for k in CLASSES for f in sorted((root / split / k).iterdir())]


# --- reading ---------------------------------------------------------------------------------------


def test_png_and_jpeg_in_three_classes_equal_pillow_file_by_file(tmp_path):
    root = make_folder(tmp_path / "photos")
    d = load_data(str(root), img_model())
    assert d.class_names == CLASSES and d.schema.kind == "images" and d.schema.class_names == CLASSES
    assert d.x_train.dtype == np.uint8 and d.x_train.shape == (18, 3, SIZE, SIZE) and d.x_test.shape[0] == 9
    np.testing.assert_array_equal(d.x_train, pillow_reference(listed(root, "train")))
    np.testing.assert_array_equal(d.x_test, pillow_reference(listed(root, "test")))
    np.testing.assert_array_equal(d.y_train, np.repeat([0, 1, 2], 6))
    grey = load_data(str(root), img_model(shape=(1, SIZE, SIZE)))
    np.testing.assert_array_equal(grey.x_train, pillow_reference(listed(root, "train"), "L"))


def test_gif_and_bmp_and_grey_and_rgba_files_are_converted_to_the_spec_channels(tmp_path):
    root = make_folder(tmp_path / "photos", splits=(("", 2),))
    Image.fromarray(draw(0, 5)).convert("P").save(root / "circle" / "p.gif")  # palette
    Image.fromarray(draw(1, 5)).save(root / "square" / "s.bmp")
    Image.fromarray(draw(2, 5)[..., 0]).save(root / "stripes" / "g.png")  # grey
    Image.fromarray(np.dstack([draw(2, 6), np.full((SIZE, SIZE), 128, np.uint8)])).save(root / "stripes" / "a.png")
    files = [f for k in CLASSES for f in sorted((root / k).iterdir())]
    for shape, mode in (((3, SIZE, SIZE), "RGB"), ((1, SIZE, SIZE), "L")):
        d = load_data(str(root), img_model(shape=shape))
        np.testing.assert_array_equal(d.x_train, pillow_reference(files, mode))


def test_a_corrupt_file_is_named(tmp_path):
    root = make_folder(tmp_path / "photos", corrupt=True)
    broken = root / "train" / "square" / "broken.png"
    with pytest.raises(DataError, match=rf"^{broken}: cannot read image \(.*\); remove or replace the file$"):
        load_data(str(root), img_model())
    good = root / "train" / "circle" / "1.png"
    good.write_bytes(good.read_bytes()[:60])  # a truncated PNG as well: both counted, the first named
    with pytest.raises(DataError, match=rf"^{good}: cannot read image .*\(2 of 28 files could not be read\)$"):
        load_data(str(root), img_model())


def test_other_sizes_are_counted_unless_resized(tmp_path):
    root = make_folder(tmp_path / "photos", splits=(("", 3),))
    for i, (w, h) in enumerate(((16, 8), (10, 6))):
        Image.fromarray(np.full((h, w, 3), 255, np.uint8)).save(root / "circle" / f"big{i}.png")
    with pytest.raises(DataError, match=r"photos: 2 of 11 images are not 8x8 \(width x height\) as the spec's "
                                        r"image\[3, 8, 8\] says \(e\.g\. .*big0\.png is 16x8\); add resize=fit"):
        load_data(str(root), img_model())
    for mode in ("fit", "crop", "pad"):
        d = load_data(f"{root}:resize={mode}", img_model())
        assert d.x_train.shape == (11, 3, SIZE, SIZE) and d.schema.resize == mode
    # 16x8 white -> pad: scaled to 8x4, centred on black; crop: its centre 8x8; fit: stretched, still white
    half = np.zeros((8, 16, 3), np.uint8)
    half[:, 8:] = 255  # left half black, right half white
    Image.fromarray(half).save(root / "circle" / "big0.png")
    files = sorted((root / "circle").iterdir())
    i = files.index(root / "circle" / "big0.png")
    crop = load_data(f"{root}:resize=crop", img_model()).x_train[i]
    assert (crop[:, :, :4] == 0).all() and (crop[:, :, 4:] == 255).all()
    pad = load_data(f"{root}:resize=pad", img_model()).x_train[i]
    assert (pad[:, :2] == 0).all() and (pad[:, 6:] == 0).all() and (pad[:, 2:6, 5:] == 255).all()


def test_class_folders_against_the_spec(tmp_path):
    root = make_folder(tmp_path / "photos")
    named = load_data(str(root), img_model(names=("stripes", "circle", "square")))
    np.testing.assert_array_equal(named.y_train, np.repeat([1, 2, 0], 6))  # by the spec's order
    with pytest.raises(DataError, match=r"photos: the data has 3 classes \(circle, square, stripes\), one folder "
                                        r"each; the spec says classes 2"):
        load_data(str(root), img_model(classes=2))
    with pytest.raises(DataError, match=r"train/stripes: a class folder the spec does not name; its classes are "
                                        r"circle, square, stripe; did you mean 'stripe'\?"):
        load_data(str(root), img_model(names=("circle", "square", "stripe")))
    (root / "train" / "loose.png").write_bytes((root / "train" / "circle" / "1.png").read_bytes())
    with pytest.raises(DataError, match=r"train/loose\.png: an image outside the class folders"):
        load_data(str(root), img_model())


def test_val_split_and_files_that_are_not_images(tmp_path):
    root = make_folder(tmp_path / "photos", splits=(("train", 4), ("val", 2), ("test", 2)))
    (root / "train" / "circle" / "notes.txt").write_text("not an image")
    (root / "train" / "circle" / ".hidden.png").write_bytes(b"junk")
    d = load_data(str(root), img_model())
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (12, 6, 6)
    np.testing.assert_array_equal(d.y_val, np.repeat([0, 1, 2], 2))
    assert f"{root}: left out 1 files that are not images" in d.notes


def png_header(width: int, height: int) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_their_header(tmp_path):
    root = make_folder(tmp_path / "photos", splits=(("", 2),))
    bomb = root / "square" / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))
    with pytest.raises(DataError, match=rf"{bomb}: image too large to decode"):
        load_data(f"{root}:resize=fit", img_model())
    bomb.write_bytes(png_header(9_000, 9_000))  # under Pillow's limit, over ours: refused before resizing
    with pytest.raises(DataError, match=rf"{bomb}: image of 9000x9000 pixels is over the 67,108,864 pixels"):
        load_data(f"{root}:resize=fit", img_model())


# --- the cache -------------------------------------------------------------------------------------


def test_decoded_once_then_cached_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "photos")
    calls = []
    real = images.convert
    monkeypatch.setattr(images, "convert", lambda *a: calls.append(1) or real(*a))
    first = load_data(str(root), img_model())
    assert len(calls) == 27 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_data(str(root), img_model())
    assert len(calls) == 27  # nothing decoded: the cache answered
    np.testing.assert_array_equal(again.x_train, first.x_train)
    changed = root / "train" / "circle" / "1.png"
    Image.fromarray(draw(2, 9)).save(changed)
    os.utime(changed, ns=(1, 1))
    third = load_data(str(root), img_model())
    assert len(calls) == 54 and not np.array_equal(third.x_train, first.x_train)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # the folder's older entry is replaced
    entry = next((tmp_path / "cache").glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:100])  # a damaged entry: decoded again, not an error
    np.testing.assert_array_equal(load_data(str(root), img_model()).x_train, third.x_train)
    monkeypatch.setenv("DNNSPEC_CACHE", "off")
    assert images.cache_dir() is None


# --- the command line ------------------------------------------------------------------------------


SPEC = """network pics
data "{root}"
input image[3, 8, 8] scale=1/255
classes 3
layers {{
  flatten
  dense 16
  relu
  dense 3
  softmax
}}
optimizer adam lr=0.01
train epochs=6 batch=8 validation=0.1 seed=0
"""


def test_check_data_says_what_the_data_has(tmp_path, capsys):
    root = make_folder(tmp_path / "photos")
    spec = tmp_path / "pics.dnn"
    spec.write_text(SPEC.format(root=root))
    assert main(["check", str(spec), "--data"]) == 0
    out = capsys.readouterr().out
    assert (f"{root}: 18 training, 9 test images in 3 classes (circle, square, stripes)\n"
            f"data {root}: 18 training, 9 test examples of (3, 8, 8) uint8\n"
            f"training examples per class: circle 6, square 6, stripes 6\nthe data fits the spec {spec}") in out
    spec.write_text(SPEC.format(root=root).replace("image[3, 8, 8]", "image[3, 6, 6]"))
    assert main(["check", str(spec), "--data"]) == 1
    assert "27 of 27 images are not 6x6" in capsys.readouterr().err
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "nhwc.npz", x=x, y=np.zeros(4))
    spec.write_text(SPEC.format(root=root).replace("image[3, 8, 8]", "image[1, 8, 8]"))
    assert main(["check", str(spec), "--data", str(tmp_path / "nhwc.npz")]) == 1
    assert ("images are 8×8×3 (channels last; 192 values); the spec says image[1, 8, 8]: write image[3, 8, 8]"
            in capsys.readouterr().err)


def test_train_export_predict_evaluate_on_an_image_folder(tmp_path, capsys):
    sk = pytest.importorskip("sklearn.metrics")
    root = make_folder(tmp_path / "photos")
    spec = tmp_path / "pics.dnn"
    spec.write_text(SPEC.format(root=root))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--progress", "none"]) == 0
    assert main(["export", str(run)]) == 0
    onnx_path = run / "model.onnx"
    capsys.readouterr()
    assert main(["evaluate", str(onnx_path), str(root), "--json"]) == 0
    by_onnx = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), str(root), "--json"]) == 0
    by_engine = json.loads(capsys.readouterr().out)
    assert by_onnx["data"] == f"{root.name} (test split)"
    assert by_onnx["accuracy"] == pytest.approx(by_engine["accuracy"], abs=1e-12)
    # the reference: each test file decoded by Pillow, run by onnxruntime, scored by scikit-learn
    import onnxruntime as ort

    files = listed(root, "test")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"input": pillow_reference(files).astype(np.float32)})[0]
    y = np.repeat([0, 1, 2], 3)
    assert by_onnx["accuracy"] == pytest.approx(sk.accuracy_score(y, probs.argmax(1)), abs=1e-12)
    f1 = sk.f1_score(y, probs.argmax(1), average=None, labels=[0, 1, 2], zero_division=0)
    assert [c["f1"] for c in by_onnx["per_class"]] == pytest.approx(list(f1), abs=1e-9)
    assert [c["name"] for c in by_onnx["per_class"]] == list(CLASSES)
    # predict: a folder, a glob and a file, in order, --limit
    assert main(["predict", str(onnx_path), str(root / "test"), "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [str(f) for f in files]
    assert [ln.split()[1] for ln in lines] == [CLASSES[k] for k in probs.argmax(1)]
    assert main(["predict", str(onnx_path), str(root / "test" / "s*" / "*.png"), str(files[0]), "--limit", "3",
                 "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [str(root / "test" / "square" / "1.png"),
                                                 str(root / "test" / "stripes" / "1.png"), str(files[0])]


def test_predict_takes_channels_last_npz_when_unambiguous(tmp_path, capsys):
    from dnnspec.engine.net import Net
    from dnnspec.export.onnx_export import export
    from dnnspec.export.predictor import Predictor

    net = Net(img_model(shape=(3, 4, 5)), seed=0)
    path = export(net, tmp_path / "m.onnx")
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 4, 5)).astype(np.uint8)
    np.savez(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1))
    assert main(["predict", str(path), str(tmp_path / "nhwc.npz"), "--out", str(tmp_path / "p.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), net.forward(x), atol=1e-5)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 9, 9, 3), np.uint8))
    with pytest.raises(DataError, match=r"input of shape \[2, 9, 9, 3\] does not fit the model, which expects "
                                        r"\[N, 3, 4, 5\] .*: images are 9×9×3 \(channels last; 243 values\); resize "
                                        r"them to 5x4 with 3 channels"):
        Predictor(path).predict(np.zeros((2, 9, 9, 3), np.uint8))


def test_spec_data_statement_with_resize(tmp_path):
    root = make_folder(tmp_path / "photos")
    model = frontend.parse(SPEC.format(root=root).replace(f'data "{root}"', f'data "{root}" resize=pad')
                           .replace("image[3, 8, 8]", "image[3, 4, 4]"))
    d = load_data(None, model)
    assert d.x_train.shape == (18, 3, 4, 4) and d.schema.resize == "pad"


def test_predict_reads_several_files_idx_folders_and_stops_at_limit(tmp_path, capsys):
    import gzip

    from dnnspec.engine.net import Net
    from dnnspec.export.onnx_export import export

    net = Net(img_model(shape=(1, 6, 5)), seed=0)
    path = export(net, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (n, 6, 5)).astype(np.uint8) for n in (3, 4))
    np.savez(tmp_path / "a.npz", x=a)
    np.save(tmp_path / "b.npy", b)
    idx = tmp_path / "idx"
    idx.mkdir()
    for name, arr in (("train-images-idx3-ubyte.gz", b), ("t10k-images-idx3-ubyte.gz", a)):
        head = bytes([0, 0, 8, 3]) + struct.pack(">3I", *arr.shape)
        (idx / name).write_bytes(gzip.compress(head + arr.tobytes()))
    for name, arr in (("train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8)),
                      ("t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))):
        (idx / name).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", len(arr)) + arr.tobytes()))
    out = tmp_path / "p.npy"
    assert main(["predict", str(path), str(tmp_path / "a.npz"), str(tmp_path / "b.npy"), "--limit", "5",
                 "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), net.forward(np.concatenate([a, b[:2]])[:, None]), atol=1e-5)
    assert main(["predict", str(path), str(idx), "--out", str(out)]) == 0
    assert f"note: {idx}: the test split, 3 examples" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(out), net.forward(a[:, None]), atol=1e-5)
    assert main(["predict", str(path), str(tmp_path / "nothing*.png")]) == 2
    assert "nothing*.png: no files match this pattern" in capsys.readouterr().err
