"""dnnspec.serve without a network: model discovery, the wire format, the batcher."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_serve import CLASSES, FEATURES, mlp_model, reference, write_repository
from tritonclient.utils import deserialize_bytes_tensor

from dnnspec.errors import CheckpointError, UsageError
from dnnspec.serve.batching import Batcher
from dnnspec.serve.models import find_models, load_repository
from dnnspec.serve.protocol import (
    InferenceError,
    TensorSpec,
    classification,
    encode_bytes,
    parse_infer_request,
    top_k,
)

SPEC = [TensorSpec("input", "FP32", (-1, 3))]


def test_find_models_in_every_layout(tmp_path):
    repo = write_repository(tmp_path / "repo")
    assert sorted((n, v) for n, v, _ in find_models(repo)) == [("mlp", "1"), ("tri", "1"), ("tri", "2")]
    assert [(n, v) for n, v, _ in find_models(repo / "mlp.onnx")] == [("mlp", "1")]
    assert [(n, v) for n, v, _ in find_models(repo / "tri")] == [("tri", "1"), ("tri", "2")]  # one model's folder


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p / "missing.onnx", "no such file"),
    (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "not an .onnx file"),
    (lambda p: p, "no models found"),
])
def test_find_models_errors(tmp_path, make, fragment):
    with pytest.raises(UsageError, match=fragment):
        find_models(make(tmp_path))


def test_file_and_folder_with_the_same_name_is_an_error(tmp_path):
    repo = write_repository(tmp_path / "repo")
    (repo / "tri.onnx").write_bytes((repo / "mlp.onnx").read_bytes())
    with pytest.raises(UsageError, match="both a file and a repository folder"):
        find_models(repo)


def test_config_default_model_filename(tmp_path):
    folder = tmp_path / "repo" / "m"
    (folder / "3").mkdir(parents=True)
    onnx.save(mlp_model([4, 2]), folder / "3" / "net.onnx")
    (folder / "config.pbtxt").write_text('name: "m"\ndefault_model_filename: "net.onnx"\n')
    assert [(n, v, p.name) for n, v, p in find_models(tmp_path / "repo")] == [("m", "3", "net.onnx")]


def test_loaded_metadata_and_class_names(tmp_path):
    repo = load_repository(write_repository(tmp_path / "repo"))
    mlp = repo.get("mlp")
    assert mlp.class_names == CLASSES and mlp.batchable
    assert [s.metadata() for s in mlp.inputs] == [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}]
    assert repo.get("tri").version == "2" and repo.versions("tri") == ["1", "2"]
    with pytest.raises(InferenceError) as e:
        repo.get("tri", "9")
    assert e.value.status == 404


def test_bad_class_names_are_ignored_with_a_warning(tmp_path, capsys):
    model = mlp_model([4, 2])
    onnx.helper.set_model_props(model, {"class_names": "not json"})
    onnx.save(model, tmp_path / "m.onnx")
    assert load_repository(tmp_path / "m.onnx").get("m").class_names is None
    assert "ignoring class_names" in capsys.readouterr().err


def test_corrupt_model_is_a_checkpoint_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.onnx: cannot load the ONNX model"):
        load_repository(tmp_path / "bad.onnx")


# ---------------------------------------------------------------- wire format

def request(data, shape=(2, 3), **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "data": data}],
                       **extra}).encode()


def test_nested_and_flat_data_give_the_same_array():
    flat = parse_infer_request(request([1, 2, 3, 4, 5, 6.5]), None, SPEC, ["y"], 10)
    nested = parse_infer_request(request([[1, 2, 3], [4, 5, 6.5]]), None, SPEC, ["y"], 10)
    expected = np.array([[1, 2, 3], [4, 5, 6.5]], np.float32)
    for r in (flat, nested):
        assert r.inputs["input"].dtype == np.float32 and np.array_equal(r.inputs["input"], expected) and r.rows == 2


def test_binary_input_is_read_after_the_header():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    head = json.dumps({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 24}}], "id": "a",
                       "parameters": {"binary_data_output": True, "top_k": 2}}).encode()
    r = parse_infer_request(head + x.tobytes(), str(len(head)), SPEC, ["y"], 10)
    assert np.array_equal(r.inputs["input"], x) and r.id == "a" and r.binary_output and r.top_k == 2


@pytest.mark.parametrize("body,fragment", [
    (request([1, 2, 3, 4, 5, float("inf")]), "infinity"),
    (request([True] * 6), "found booleans"),
    (request([1, 2, 3, 4, 5, None]), "found null"),
    (request([1, 2, 3], shape=(1, 3), id=5), "'id' must be a string"),
    (request([1, 2, 3], shape=(1, 3), outputs="y"), "'outputs' must be a list"),
    (request([1, 2, 3], shape=(1, 3), parameters={"top_k": -1}), "top_k must be a non-negative integer"),
    (json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}] * 2}).encode(),
     "given twice"),
    (request([1.0] * 33, shape=(11, 3)), "over the limit of 10 rows"),
    (request([1, 2, 3], shape=(1, 3), outputs=[{"name": "y"}] * 2000), "output 'y' is asked for more than once"),
    (b'{"inputs": ' + b"[" * 100_000, "nested too deeply"),
    (request([1, 2, 3], shape=(1, 3))[:-1] + b', "parameters": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
     "nested too deeply"),
])
def test_more_bad_requests(body, fragment):
    with pytest.raises(InferenceError, match=fragment) as e:
        parse_infer_request(body, None, SPEC, ["y"], 10)
    assert e.value.status == 400


def test_top_k_and_classification_against_numpy():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]], np.float32)
    names, best = top_k(scores, 2, ["a", "b", "c"])
    assert names.tolist() == [["b", "c"], ["c", "a"]]  # a tie goes to the lower index
    assert np.array_equal(best, np.array([[0.5, 0.4], [0.4, 0.3]], np.float32))
    assert top_k(scores, 1, None)[0].tolist() == [["1"], ["2"]]
    assert classification(scores, 1, ["a", "b", "c"]).tolist() == [["0.500000:1:b"], ["0.400000:2:c"]]
    with pytest.raises(InferenceError, match="top_k is 4"):
        top_k(scores, 4, None)


def test_bytes_encoding_is_what_tritonclient_decodes():
    arr = np.array([["cat", "dög"], ["", "x"]], dtype=object)
    assert [b.decode() for b in deserialize_bytes_tensor(encode_bytes(arr))] == ["cat", "dög", "", "x"]


# ---------------------------------------------------------------- batcher

def test_batcher_merges_and_splits_back(tmp_path):
    repo_dir = write_repository(tmp_path / "repo")
    model = load_repository(repo_dir).get("mlp")
    xs = [np.random.default_rng(i).normal(size=(1 + i % 3, FEATURES)).astype(np.float32) for i in range(10)]

    async def go():
        batcher = Batcher(model, max_batch=64, window_s=0.05, pool=None)
        try:
            return await asyncio.gather(*(batcher.infer({"input": x}, len(x)) for x in xs))
        finally:
            await batcher.close()

    results = asyncio.run(go())
    assert model.stats.execution_count == 1 and model.stats.inference_count == sum(len(x) for x in xs)
    sess = ort.InferenceSession(str(repo_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    merged = sess.run(None, {"input": np.concatenate(xs)})[0]
    np.testing.assert_array_equal(np.concatenate([r["probabilities"] for r in results]), merged)
    for x, r in zip(xs, results):  # row results do not depend on their neighbours
        np.testing.assert_allclose(r["probabilities"], reference(repo_dir / "mlp.onnx", x)["probabilities"],
                                   rtol=1e-6, atol=1e-7)


def test_batcher_respects_max_batch(tmp_path):
    model = load_repository(write_repository(tmp_path / "repo")).get("mlp")
    xs = [np.ones((3, FEATURES), np.float32)] * 5

    async def go():
        batcher = Batcher(model, max_batch=7, window_s=0.05, pool=None)
        try:
            await asyncio.gather(*(batcher.infer({"input": x}, 3) for x in xs))
        finally:
            await batcher.close()

    asyncio.run(go())
    assert model.stats.execution_count == 3 and model.stats.inference_count == 15  # 6 + 6 + 3 rows


def _binary_body(x: np.ndarray, **extra) -> tuple[bytes, str]:
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}], **extra}).encode()
    return head + raw, str(len(head))


def test_a_repeated_binary_header_is_checked_once_and_still_decodes_each_body(monkeypatch):
    """The second request with the same JSON header comes from the plan cache: its own tensor,
    its own NaN check, and a body of another length is parsed (and refused) in full."""
    from dnnspec.serve import protocol

    monkeypatch.setattr(protocol, "_PLANS", protocol.BoundedCache(entries=256, nbytes=1 << 20, item_bytes=16 << 10))
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), -np.arange(6, dtype=np.float32).reshape(2, 3)
    body_a, hl = _binary_body(a, id="same")
    body_b, hl_b = _binary_body(b, id="same")
    assert hl == hl_b and body_a[:int(hl)] == body_b[:int(hl)]
    ra = parse_infer_request(body_a, hl, SPEC, ["probabilities"], 100)
    assert len(protocol._PLANS) == 1
    rb = parse_infer_request(body_b, hl, SPEC, ["probabilities"], 100)
    np.testing.assert_array_equal(ra.inputs["input"], a)
    np.testing.assert_array_equal(rb.inputs["input"], b)
    assert (rb.rows, rb.id) == (2, "same")
    bad = b.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InferenceError, match="contains NaN"):
        parse_infer_request(_binary_body(bad, id="same")[0], hl, SPEC, ["probabilities"], 100)
    short = body_b[:-4]  # same header, 4 bytes of tensor missing: not from the cache
    with pytest.raises(InferenceError, match="runs past the end of the body"):
        parse_infer_request(short, hl, SPEC, ["probabilities"], 100)
    with pytest.raises(InferenceError, match="over the limit of 1 rows"):  # max_rows is part of the key
        parse_infer_request(body_a, hl, SPEC, ["probabilities"], 1)


def test_the_plan_cache_is_bounded_in_entries_and_bytes(monkeypatch):
    """Bounded by count, by total header bytes, and big headers never kept: 40 valid requests with
    4 MiB headers used to pin 40 x (4 MiB key + 4 MiB parsed parameters) in the cache."""
    from dnnspec.serve import protocol

    cache = protocol.BoundedCache(entries=3, nbytes=1 << 20, item_bytes=16 << 10)
    monkeypatch.setattr(protocol, "_PLANS", cache)
    for i in range(5):
        body, hl = _binary_body(np.ones((1, 3), np.float32), id=f"r{i}")
        parse_infer_request(body, hl, SPEC, ["probabilities"], 100)
    assert len(cache) == 3 and cache.size == sum(len(k[0]) for k in cache._items)
    monkeypatch.setattr(protocol, "_PLANS", protocol.BoundedCache(entries=256, nbytes=1 << 20, item_bytes=16 << 10))
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    for i in range(40):  # valid requests, each with a 4 MiB header: all answered, none kept
        body, hl = _binary_body(x, parameters={"pad": f"{i:04d}" + " " * (4 << 20)})
        assert np.array_equal(parse_infer_request(body, hl, SPEC, ["probabilities"], 100).inputs["input"], x)
    assert len(protocol._PLANS) == 0 and protocol._PLANS.size == 0
    for i in range(300):  # 12 KiB headers: kept, but never more than 1 MiB of them
        body, hl = _binary_body(x, parameters={"pad": f"{i:04d}" + " " * (12 << 10)})
        parse_infer_request(body, hl, SPEC, ["probabilities"], 100)
    assert 0 < protocol._PLANS.size <= 1 << 20 and len(protocol._PLANS) == (1 << 20) // int(hl)


def test_bounded_cache_drops_the_oldest_to_fit():
    from dnnspec.serve.protocol import BoundedCache

    cache = BoundedCache(entries=10, nbytes=100, item_bytes=60)
    for key, size in [("a", 40), ("b", 40), ("c", 61), ("d", 30)]:
        cache.put(key, key.upper(), size)
    assert [cache.get(k) for k in "abcd"] == [None, "B", None, "D"] and cache.size == 70  # c too big, a dropped
    cache.put("b", "again", 1)  # already there: kept as it was
    assert cache.get("b") == "B" and len(cache) == 2


# ---------------------------------------------------------------- answer size bound

LABELS = ["\U0001f600" * 3, 'say "hi"', "x" * 40, "é"]
WORST_FLOATS = np.array([-1.1754944e-38, -3.4028235e38, -1.4e-45, -1 / 3, -0.1], np.float32)


def _encode_like_the_server(outputs, selection, k, binary_top_k) -> bytes:
    """What Server._response_body + encode_response make of these outputs."""
    from dnnspec.serve.protocol import encode_response, output_entry

    chunks, entries = [], []
    for sel in selection:
        arr = outputs[sel.name]
        if sel.classification:
            arr = classification(arr, sel.classification, LABELS)
        entries.append(output_entry(sel.name, arr, sel.binary, chunks))
    if k:
        names, scores = top_k(outputs["probabilities"], k, LABELS)
        entries.append(output_entry("top_k_classes", names, binary_top_k, chunks))
        entries.append(output_entry("top_k_scores", scores, binary_top_k, chunks))
    return encode_response({"model_name": "m", "model_version": "1", "outputs": entries}, chunks)[0]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_answer_bound_is_an_upper_bound_for_the_longest_values(binary):
    """answer_bound, from shapes alone, is never below the real encoding of the longest numbers
    and labels JSON can get, and within 30 % of it for a large float output."""
    from dnnspec.serve.protocol import OutputRequest, answer_bound

    n = 400
    outputs = {"probabilities": np.resize(WORST_FLOATS, (n, 4)), "logits": np.resize(WORST_FLOATS, (n, 4)) * 1,
               "ints": np.full((n, 3), np.iinfo(np.int64).min), "flags": np.zeros((n, 2), bool),
               "words": np.array([["\U0001f600" * 5]] * n, dtype=object)}
    selection = [OutputRequest("probabilities", binary), OutputRequest("logits", binary, classification=3),
                 OutputRequest("ints", binary), OutputRequest("flags", binary), OutputRequest("words", binary)]
    label_bytes = max(len(json.dumps(s)) for s in LABELS)
    real = len(_encode_like_the_server(outputs, selection, 4, binary))
    bound = answer_bound(outputs, selection, 4, binary, "probabilities", label_bytes)
    assert real <= bound
    floats = [OutputRequest("probabilities", binary)]
    real = len(_encode_like_the_server({"probabilities": np.resize(WORST_FLOATS, (5000, 40))}, floats, 0, binary))
    assert real <= answer_bound({"probabilities": np.resize(WORST_FLOATS, (5000, 40))}, floats, 0, binary,
                                "probabilities", label_bytes) <= 1.3 * real


def test_answer_bound_clamps_k_to_the_classes():
    """A top_k or classification over the class count is left to its own message, not the size limit."""
    from dnnspec.serve.protocol import OutputRequest, answer_bound

    scores = {"probabilities": np.zeros((2, 3), np.float32)}
    huge = answer_bound(scores, [OutputRequest("probabilities", False, classification=10**12)], 10**12, False,
                        "probabilities", 10)
    assert huge == answer_bound(scores, [OutputRequest("probabilities", False, classification=3)], 3, False,
                                "probabilities", 10)


def test_fit_open_files_raises_the_soft_limit_or_lowers_the_cap(monkeypatch):
    from dnnspec.serve import guard

    class FakeResource:
        RLIMIT_NOFILE, RLIM_INFINITY = 7, -1

        def __init__(self, soft, hard):
            self.limits = (soft, hard)

        def getrlimit(self, which):
            return self.limits

        def setrlimit(self, which, limits):
            self.limits = limits

    fake = FakeResource(1024, 4096)
    monkeypatch.setattr(guard, "resource", fake)
    assert guard.fit_open_files(1000) == (1000, 1000 + guard.RESERVED_FILES) and fake.limits == (1064, 4096)
    monkeypatch.setattr(guard, "resource", FakeResource(256, 256))
    assert guard.fit_open_files(1000) == (256 - guard.RESERVED_FILES, 256)
    monkeypatch.setattr(guard, "resource", FakeResource(40, 40))
    with pytest.raises(UsageError, match=r"open-file limit \(ulimit -n\) is 40; dnnspec serve needs at least 65"):
        guard.fit_open_files(1000)
