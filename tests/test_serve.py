"""`dnnspec serve` end to end: a real server on a loopback port, the official Triton client,
raw HTTP for bad requests; every result checked against a direct onnxruntime call."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from dnnspec.cli import main  # noqa: E402
from dnnspec.serve.app import ServeConfig, bind_socket, create_app, uvicorn_options  # noqa: E402
from dnnspec.serve.models import load_repository  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "bird", "fish", "frog"]
FEATURES = 20


def mlp_model(sizes: list[int], seed: int = 0, class_names: list[str] | None = None) -> onnx.ModelProto:
    """An exporter-shaped MLP: input (N, F) -> Gemm/Relu ... Gemm -> logits -> Softmax -> probabilities."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), f"dense{i}.kernel"),
                  numpy_helper.from_array(rng.normal(0, 0.1, (b,)).astype(np.float32), f"dense{i}.bias")]
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"dense{i}.kernel", f"dense{i}.bias"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [out + "_relu"]))
            out += "_relu"
        prev = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", sizes[-1]]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if class_names is not None:
        helper.set_model_props(model, {"class_names": json.dumps(class_names)})
    onnx.checker.check_model(model)
    return model


def write_repository(root: Path) -> Path:
    """A directory with a plain file (mlp.onnx) and a Triton-style model (tri, versions 1 and 2)."""
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp_model([FEATURES, 16, len(CLASSES)], seed=0, class_names=CLASSES), root / "mlp.onnx")
    for version, seed in (("1", 1), ("2", 2)):
        (root / "tri" / version).mkdir(parents=True)
        onnx.save(mlp_model([FEATURES, 8, 3], seed=seed), root / "tri" / version / "model.onnx")
    (root / "tri" / "config.pbtxt").write_text('name: "tri"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n')
    return root


def reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The independent reference: a plain onnxruntime session on the file."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one raw HTTP request to 127.0.0.1:port on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def cli_server(args: list[str], env: dict | None = None, preexec_fn=None, ready_s: float = 30, stop_s: float = 30):
    """``python -m dnnspec serve ARGS`` on 127.0.0.1; yields (process, port, announce line).

    Ready when ``/v2/health/ready`` answers 200 (within ``ready_s``); stopped by its pid with
    SIGINT, which must end it with status 0 and no traceback within ``stop_s`` (else killed).
    """
    port_args = [] if "--port" in args else ["--port", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "dnnspec", "serve", *args, *port_args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec_fn)
    try:
        announce = proc.stderr.readline()
        assert "on http://127.0.0.1:" in announce, announce
        port = int(announce.split("127.0.0.1:")[1].split("/")[0])
        deadline = time.monotonic() + ready_s
        while True:
            with contextlib.suppress(OSError):
                if request(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)
        yield proc, port, announce
        proc.send_signal(signal.SIGINT)
        assert proc.wait(stop_s) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Running:
    """A server running in a background thread on a free loopback port, with the settings of ``dnnspec serve``."""

    def __init__(self, path: Path, http: type | None = None, **options):
        self.config = ServeConfig(model_path=str(path), port=0, **options)
        self.app = create_app(load_repository(path), self.config)
        self.state = self.app.state.server
        sock = bind_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"
        settings = uvicorn_options(self.config)
        if http is not None:  # another HTTP parser than uvicorn's choice
            settings["http"] = http
        self.server = uvicorn.Server(uvicorn.Config(self.app, **settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body) of one raw HTTP request on a fresh connection."""
        return request(self.port, method, path, body, headers)

    def stats(self, name: str) -> dict:
        status, _, body = self.request("GET", f"/v2/models/{name}/stats")
        assert status == 200
        return json.loads(body)["model_stats"][0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_repository(tmp_path_factory.mktemp("serve") / "models")


@pytest.fixture(scope="module")
def served(repo):
    """No batching, small limits: protocol and bad-request tests."""
    server = Running(repo, batch_window_ms=0, max_body_mb=0.25, max_rows=100)
    yield server
    server.stop()


@pytest.fixture()
def client(served):
    c = httpclient.InferenceServerClient(served.url)
    yield c
    c.close()


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


# ---------------------------------------------------------------- metadata (tritonclient)

def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "dnnspec" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_matches_the_onnx_file(client, repo):
    meta = client.get_model_metadata("mlp")
    sess = ort.InferenceSession(str(repo / "mlp.onnx"), providers=["CPUExecutionProvider"])
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}]
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in sess.get_outputs()]
    assert all(o["datatype"] == "FP32" and o["shape"] == [-1, len(CLASSES)] for o in meta["outputs"])
    assert meta["parameters"]["class_names"] == CLASSES
    assert client.is_model_ready("mlp") and client.is_model_ready("tri", "1") and not client.is_model_ready("nope")


def test_triton_repository_versions(client):
    assert client.get_model_metadata("tri")["versions"] == ["1", "2"]
    assert client.get_model_metadata("tri", "1")["outputs"][0]["shape"] == [-1, 3]
    config = client.get_model_config("tri")
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [FEATURES]
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.get_model_metadata("tri", "7")


# ---------------------------------------------------------------- inference (tritonclient)

@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_equals_onnxruntime_bit_for_bit(client, repo, binary_in, binary_out):
    x = rows(7, seed=3)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("probabilities", "logits")]
    result = client.infer("mlp", [inp], outputs=outs, request_id="req-42")
    ref = reference(repo / "mlp.onnx", x)
    for name in ("probabilities", "logits"):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == ref[name].shape
        assert np.array_equal(got, ref[name]), name
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"


def test_infer_all_outputs_by_default_binary(client, repo):
    x = rows(3, seed=4)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])  # no outputs: the client asks for binary_data_output
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "logits"]
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    ref = reference(repo / "mlp.onnx", x)
    assert np.array_equal(result.as_numpy("logits"), ref["logits"])


def test_infer_output_selection_returns_only_what_was_asked(client):
    x = rows(2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]


def test_infer_triton_versions_and_gzip_request(client, repo):
    x = rows(5, seed=5)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for version in ("1", "2"):
        got = client.infer("tri", [inp], model_version=version).as_numpy("probabilities")
        assert np.array_equal(got, reference(repo / "tri" / version / "model.onnx", x)["probabilities"])
    latest = client.infer("tri", [inp], request_compression_algorithm="gzip")
    assert latest.get_response()["model_version"] == "2"
    assert np.array_equal(latest.as_numpy("probabilities"), reference(repo / "tri/2/model.onnx", x)["probabilities"])


def test_top_k_class_names(client, repo):
    x = rows(6, seed=6)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    result = client.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)],
                          parameters={"top_k": 3})
    probs = reference(repo / "mlp.onnx", x)["probabilities"]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    names = result.as_numpy("top_k_classes")
    assert names.shape == (6, 3)
    assert [[n.decode() if isinstance(n, bytes) else n for n in r] for r in names] == [
        [CLASSES[j] for j in r] for r in order]
    assert np.array_equal(result.as_numpy("top_k_scores"), np.take_along_axis(probs, order, axis=1))


def test_triton_classification_extension(client, repo):
    x = rows(4, seed=7)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)])
    probs = reference(repo / "mlp.onnx", x)["probabilities"]
    got = result.as_numpy("probabilities")
    assert got.shape == (4, 2)
    for r in range(4):
        best = int(np.argmax(probs[r]))
        score, index, label = got[r, 0].decode().split(":")
        assert (int(index), label) == (best, CLASSES[best]) and math.isclose(float(score), probs[r, best], abs_tol=1e-6)


# ---------------------------------------------------------------- bad requests (raw HTTP)

def json_infer(x_shape, data, datatype="FP32", name="input", **extra) -> bytes:
    tensor = {"name": name, "shape": x_shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def binary_infer(x: np.ndarray, header_length_delta: int = 0) -> tuple[bytes, dict]:
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head) + header_length_delta),
                        "Content-Type": "application/octet-stream"}


GOOD = rows(1).ravel().tolist()
NAN_ROW = rows(1).copy()
NAN_ROW[0, 3] = np.nan

BAD_REQUESTS = [
    # (id, path, body, headers, status, message fragment)
    ("malformed-json", "mlp", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not-an-object", "mlp", b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", "mlp", b"{}", {}, 400, "'inputs'"),
    ("wrong-input-name", "mlp", json_infer([1, FEATURES], GOOD, name="x"), {}, 400, "unknown input 'x'"),
    ("wrong-datatype", "mlp", json_infer([1, FEATURES], GOOD, datatype="FP64"), {}, 400, "datatype 'FP64'"),
    ("wrong-shape", "mlp", json_infer([1, FEATURES - 1], GOOD[:-1]), {}, 400, "does not match the model's"),
    ("wrong-rank", "mlp", json_infer([FEATURES], GOOD), {}, 400, "does not match the model's"),
    ("wrong-element-count", "mlp", json_infer([2, FEATURES], GOOD), {}, 400, "needs 40 elements, got 20"),
    ("nan-json", "mlp", json_infer([1, FEATURES], GOOD[:-1]).replace(b"]}]", b", NaN]}]"), {}, 400, "NaN"),
    ("nan-binary", "mlp", *binary_infer(NAN_ROW), 400, "contains NaN"),
    ("strings-in-data", "mlp", json_infer([1, 2], ["a", "b"]), {}, 400, "does not match"),
    ("strings-in-data-right-shape", "mlp", json_infer([1, FEATURES], ["a"] * FEATURES), {}, 400, "found strings"),
    ("ragged-data", "mlp", json_infer([2, FEATURES], [GOOD, GOOD[:3]]), {}, 400, "ragged"),
    ("empty-batch", "mlp", json_infer([0, FEATURES], []), {}, 400, "empty batch"),
    ("too-many-rows", "mlp", *binary_infer(rows(101)), 400, "over the limit of 100 rows"),
    ("unknown-output", "mlp", json_infer([1, FEATURES], GOOD, outputs=[{"name": "nope"}]), {}, 400,
     "unknown output 'nope'"),
    ("bad-top-k", "mlp", json_infer([1, FEATURES], GOOD, parameters={"top_k": 9}), {}, 400, "top_k is 9"),
    ("unknown-model", "nope", json_infer([1, FEATURES], GOOD), {}, 404, "unknown model 'nope'"),
    ("unknown-version", "tri/versions/3", json_infer([1, FEATURES], GOOD), {}, 404, "no version '3'"),
    ("path-in-name", "..%2F..%2Fetc%2Fpasswd", json_infer([1, FEATURES], GOOD), {}, 404, "no such endpoint"),
    ("dots-in-name", "..", json_infer([1, FEATURES], GOOD), {}, 404, "unknown model '..'"),
    ("header-length-too-long", "mlp", *binary_infer(rows(1), 5), 400, "Inference-Header-Content-Length"),
    ("header-length-too-short", "mlp", *binary_infer(rows(1), -3), 400, "malformed JSON"),
    ("header-length-past-body", "mlp", *binary_infer(rows(1), 10_000), 400, "but the body has"),
    ("header-length-not-int", "mlp", binary_infer(rows(1))[0], {"Inference-Header-Content-Length": "abc"}, 400,
     "must be an integer"),
    ("binary-size-wrong", "mlp", binary_infer(rows(1))[0].replace(b'"binary_data_size": 80', b'"binary_data_size": 76'),
     {"Inference-Header-Content-Length": str(len(binary_infer(rows(1))[0]) - 80)}, 400, "needs 80 bytes"),
    ("body-over-limit", "mlp", b"x" * (300 * 1024), {}, 413, "over the limit"),
    ("repeated-output", "mlp", json_infer([1, FEATURES], GOOD, outputs=[{"name": "logits"}] * 3), {}, 400,
     "output 'logits' is asked for more than once"),
    ("nested-json", "mlp", b'{"inputs": ' + b"[" * 20_000, {}, 400, "nested too deeply"),
]


@pytest.mark.parametrize("path,body,headers,status,fragment", [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_4xx_and_the_next_one_works(served, repo, path, body, headers, status, fragment):
    got_status, got_headers, got_body = served.request("POST", f"/v2/models/{path}/infer", body, headers)
    assert got_status == status, got_body
    assert got_headers["content-type"] == "application/json"
    assert fragment in json.loads(got_body)["error"]
    x = rows(2, seed=9)
    ok, _, ok_body = served.request("POST", "/v2/models/mlp/infer", json_infer([2, FEATURES], x.ravel().tolist()))
    assert ok == 200
    probs = json.loads(ok_body)["outputs"][0]
    assert np.array_equal(np.array(probs["data"], np.float32).reshape(2, -1), reference(repo / "mlp.onnx", x)[
        "probabilities"])


def test_unknown_route_and_method_are_json_errors(served):
    status, _, body = served.request("GET", "/v3/whatever")
    assert status == 404 and "error" in json.loads(body)
    status, _, body = served.request("GET", "/v2/models/mlp/infer")
    assert status == 405 and "error" in json.loads(body)


def test_cached_response_heads_give_the_same_bytes(repo):
    """Binary answers reuse the JSON head of the last answer with the same outputs and shapes:
    the bytes equal a fresh encoding for new data, other shapes, a selection, and an empty selection."""
    from dnnspec.serve.protocol import OutputRequest, encode_response, parse_infer_request

    server = Running(repo, batch_window_ms=0)
    try:
        state = server.state
        m = state.repository.get("mlp")
        cases = [dict(outputs=None, binary_output=True),
                 dict(outputs=[OutputRequest("probabilities", True)], binary_output=False),
                 dict(outputs=[], binary_output=True)]
        for n in (1, 3, 3):
            x = rows(n, seed=n * 7)
            ref = reference(repo / "mlp.onnx", x)
            for case in cases:
                body, headers = binary_infer(x)
                req = parse_infer_request(body, headers["Inference-Header-Content-Length"], m.inputs,
                                          m.output_names, 100)
                req.outputs, req.binary_output = case["outputs"], case["binary_output"]
                got = state._encode(m, req, ref)
                fresh = encode_response(*state._response_body(m, req, ref))
                assert got == fresh
        assert len(state._heads) == 4  # two cacheable cases x two shapes; the empty selection is not cached
    finally:
        server.stop()


def test_slow_body_gets_408_and_slow_inference_503(repo):
    """The request deadline (timeout_s) covers the body (408 when it does not arrive) and the inference (503)."""
    server = Running(repo, batch_window_ms=0, timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in")
            reply = sock.recv(65536).decode()
        head, _, body = reply.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 408") and "not received within 0.5 s" in json.loads(body)["error"]

        def stuck(inputs, rows):  # a future nobody completes
            return asyncio.get_running_loop().create_future()

        server.state.batchers[("mlp", "1")].submit = stuck
        body, headers = binary_infer(rows(1))
        status, _, raw = server.request("POST", "/v2/models/mlp/infer", body, headers)
        assert status == 503 and "inference timed out after 0.5 s" in json.loads(raw)["error"]
    finally:
        server.stop()


def test_an_answer_over_max_answer_mb_is_refused_before_encoding(repo):
    server = Running(repo, batch_window_ms=0, max_answer_mb=0.01)  # 10 KiB
    try:
        x = rows(40, seed=12)
        status, _, raw = server.request("POST", "/v2/models/mlp/infer", json_infer([40, FEATURES], x.ravel().tolist()))
        message = json.loads(raw)["error"]
        assert status == 400 and message.startswith("the answer could take up to ") and message.endswith(
            " bytes, over the limit of 10,485 bytes (--max-answer-mb 0.01); ask for fewer rows or outputs, "
            "or for binary data")
        body = json_infer([40, FEATURES], x.ravel().tolist(), outputs=[{"name": "logits"}])  # half: fits
        status, _, raw = server.request("POST", "/v2/models/mlp/infer", body)
        assert status == 200
        got = np.array(json.loads(raw)["outputs"][0]["data"], np.float32).reshape(40, -1)
        assert np.array_equal(got, reference(repo / "mlp.onnx", x)["logits"])
    finally:
        server.stop()


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_head_limits_with_either_http_parser(repo, parser):
    """431 for a head over --max-header-kb (sent at once or in pieces), 408 for one unfinished after
    --header-timeout-s, with uvicorn's httptools protocol and with its h11 one."""
    from dnnspec.serve.guard import GuardedH11, GuardedHttpTools

    if parser == "httptools":
        pytest.importorskip("httptools")
    server = Running(repo, http=GuardedHttpTools if parser == "httptools" else GuardedH11, batch_window_ms=0,
                     header_timeout_s=0.5, max_header_kb=4)
    try:
        big = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        for pieces in (big[:40], big[40:3000], big[3000:]), (big,):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                for piece in pieces:
                    sock.sendall(piece)
                    time.sleep(0.05)
                reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 431 ") and reply.endswith(
                b'{"error":"request line and headers are over the limit of 4096 bytes"}'), reply
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408 ") and b"not received within 0.5 s" in reply
        assert 0.4 < time.monotonic() - t0 < 3
        assert server.request("GET", "/v2/health/ready", headers={"X-Fine": "a" * 3500})[0] == 200
        x = rows(3, seed=13)
        status, _, raw = server.request("POST", "/v2/models/mlp/infer", *binary_infer(x))
        out = json.loads(raw)["outputs"][0]  # JSON outputs: none was asked for in binary
        assert status == 200 and np.array_equal(np.array(out["data"], np.float32).reshape(3, -1),
                                                reference(repo / "mlp.onnx", x)["probabilities"])
    finally:
        server.stop()


def test_at_the_connection_cap_the_quietest_idle_connection_makes_room(repo):
    """--max-connections 3: a fourth client closes the idle connection quiet longest and is answered;
    when all three wait for their answers, the fourth gets a 503 instead."""
    server = Running(repo, batch_window_ms=0, max_connections=3, timeout_s=10, header_timeout_s=60)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.2)
        assert server.request("GET", "/v2/health/ready")[0] == 200
        idle[0].settimeout(3)  # far within the head deadline: closed to make room, not for being late
        assert idle[0].recv(100) == b""  # the oldest idle one was closed, without an answer
        for sock in idle[1:]:
            sock.close()
        release = threading.Event()

        async def stuck(inputs, rows):  # three requests that wait until released
            while not release.is_set():
                await asyncio.sleep(0.01)
            return {"probabilities": np.zeros((rows, 5), np.float32), "logits": np.zeros((rows, 5), np.float32)}

        server.state.batchers[("mlp", "1")].submit = stuck
        args = ("POST", "/v2/models/mlp/infer", *binary_infer(rows(1)))
        waiting = [threading.Thread(target=server.request, args=args) for _ in range(3)]
        for t in waiting:
            t.start()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = sock.recv(65536)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head
        assert json.loads(body)["error"].startswith("too many open connections (3), all waiting for answers")
        release.set()
        for t in waiting:
            t.join(10)
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_client_gone_before_its_body_gets_a_400_message(repo):
    """At the ASGI level (over HTTP nobody would read it): a disconnect mid-body is a clear 400."""
    state = create_app(load_repository(repo), ServeConfig(model_path=str(repo), batch_window_ms=0)).state.server
    messages = iter([{"type": "http.request", "body": b'{"inp', "more_body": True}, {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    async def go():
        scope = {"type": "http", "method": "POST", "path": "/v2/models/mlp/infer", "headers": []}
        await state.infer_asgi("mlp", None, scope, receive, send)
        await state.deadlines.close()

    asyncio.run(go())
    state.pool.shutdown()
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {"error": "the client disconnected before sending the whole body"}


def test_infer_through_the_starlette_route_gives_the_same_answer(repo):
    """InferFront answers POST .../infer itself; the Starlette route behind it (used when the
    Starlette app is mounted on its own) gives the same response."""
    server = Running(repo, batch_window_ms=0)
    try:
        x = rows(2, seed=4)
        body, headers = binary_infer(x)
        front = server.request("POST", "/v2/models/mlp/infer", body, headers)
        httpx = pytest.importorskip("httpx")

        async def direct():
            transport = httpx.ASGITransport(app=server.app.app)  # the Starlette app alone
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return (await c.post("/v2/models/mlp/infer", content=body, headers=headers),
                        await c.post("/v2/models/nope/infer", content=body, headers=headers))

        r, bad = asyncio.run(direct())
        assert (r.status_code, r.content) == (front[0], front[2])
        assert r.headers["content-type"] == front[1]["content-type"] == "application/json"
        assert bad.status_code == 404 and "unknown model 'nope'" in bad.json()["error"]
    finally:
        server.stop()


# ---------------------------------------------------------------- dynamic batching

def concurrent_infer(server: Running, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Send every x at once from its own thread; return the probabilities in order."""
    barrier = threading.Barrier(len(xs))
    results: list = [None] * len(xs)

    def one(i: int) -> None:
        body, headers = binary_infer(xs[i])
        barrier.wait()
        status, resp_headers, raw = server.request("POST", "/v2/models/mlp/infer", body, headers)
        assert status == 200, raw
        head = int(resp_headers.get("inference-header-content-length", len(raw)))
        out = json.loads(raw[:head])["outputs"][0]
        results[i] = np.array(out["data"], np.float32).reshape(out["shape"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return results


def test_dynamic_batching_merges_concurrent_requests(repo):
    # a long window: its idle gap (window/8 = 250 ms) must outlast 16 threads connecting on a busy machine
    server = Running(repo, batch_window_ms=2000, max_batch=64)
    try:
        xs = [rows(1 + i % 3, seed=100 + i) for i in range(16)]
        results = concurrent_infer(server, xs)
        stats = server.stats("mlp")
        assert stats["inference_count"] == sum(len(x) for x in xs)
        assert stats["execution_count"] <= 4, stats  # 16 requests, a handful of session.run calls
        for x, got in zip(xs, results):
            np.testing.assert_allclose(got, reference(repo / "mlp.onnx", x)["probabilities"], rtol=1e-6, atol=1e-7)
    finally:
        server.stop()


def test_nan_in_a_batched_request_fails_only_that_request(repo):
    """With batching on, the NaN/infinity check runs once per merged batch: the bad request gets
    its 400 with the usual message, the others in the same batch their exact answers."""
    server = Running(repo, batch_window_ms=2000, max_batch=64)  # idle gap 250 ms: see the test above
    try:
        xs = [rows(2, seed=50 + i) for i in range(6)]
        xs[2][1, 5], xs[4][0, 0] = np.nan, np.inf
        barrier = threading.Barrier(len(xs))
        answers: list = [None] * len(xs)

        def one(i: int) -> None:
            body, headers = binary_infer(xs[i])
            barrier.wait()
            answers[i] = server.request("POST", "/v2/models/mlp/infer", body, headers)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert server.stats("mlp")["execution_count"] <= 3
        for i, (status, _, raw) in enumerate(answers):
            if i in (2, 4):
                word = "NaN" if i == 2 else "infinity"
                assert status == 400 and json.loads(raw)["error"] == (
                    f"input 'input' contains {word}; every value must be finite"), raw
            else:
                assert status == 200, raw
                out = json.loads(raw)["outputs"][0]
                np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]),
                                           reference(repo / "mlp.onnx", xs[i])["probabilities"], rtol=1e-6, atol=1e-7)
        assert server.stats("mlp")["inference_count"] == 8  # the bad requests' rows never ran
    finally:
        server.stop()


def test_max_batch_caps_rows_per_run(repo):
    server = Running(repo, batch_window_ms=200, max_batch=4)
    try:
        concurrent_infer(server, [rows(2, seed=i) for i in range(8)])
        stats = server.stats("mlp")
        assert stats["inference_count"] == 16 and stats["execution_count"] >= 4
    finally:
        server.stop()


def test_window_zero_runs_each_request_alone(served):
    before = served.stats("mlp")
    concurrent_infer(served, [rows(1, seed=i) for i in range(8)])
    after = served.stats("mlp")
    assert after["execution_count"] - before["execution_count"] == 8


def test_a_batch_closes_after_an_idle_gap_not_the_whole_window(repo):
    """One request alone on a 1.6 s window is answered after the idle gap (window/8 = 0.2 s)."""
    server = Running(repo, batch_window_ms=1600, max_batch=64)
    try:
        body, headers = binary_infer(rows(1, seed=5))
        t0 = time.monotonic()
        status, _, _ = server.request("POST", "/v2/models/mlp/infer", body, headers)
        elapsed = time.monotonic() - t0
        assert status == 200 and 0.15 < elapsed < 1.2, elapsed
    finally:
        server.stop()


def test_graceful_shutdown_finishes_requests_in_flight(repo):
    server = Running(repo, batch_window_ms=400, max_batch=64)
    model = server.state.batchers[("mlp", "1")].model
    run = model.run
    model.run = lambda inputs: (time.sleep(0.5), run(inputs))[1]  # still running when the stop comes
    x = rows(3, seed=11)
    box = {}

    def send() -> None:
        body, headers = binary_infer(x)
        box["status"], box["headers"], box["body"] = server.request("POST", "/v2/models/mlp/infer", body, headers)

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.15)  # the request now waits in its batch or runs
    server.stop()
    t.join(10)
    assert box["status"] == 200
    out = json.loads(box["body"])["outputs"][0]
    assert np.array_equal(np.array(out["data"], np.float32).reshape(3, -1),
                          reference(repo / "mlp.onnx", x)["probabilities"])


# ---------------------------------------------------------------- command line

def test_cli_serves_until_sigint(repo):
    with cli_server([str(repo / "mlp.onnx")], ready_s=10, stop_s=15):
        pass


@pytest.mark.parametrize("args,code,fragment", [
    (["missing.onnx"], 2, "no such file or directory"),
    (["--provider", "cuda"], 2, "--provider cuda"),
    (["--max-batch", "0"], 2, "--max-batch must be >= 1"),
    (["--batch-window-ms", "-1"], 2, "--batch-window-ms must be >= 0"),
    (["--max-connections", "0"], 2, "--max-connections must be >= 1"),
    (["--header-timeout-s", "inf"], 2, "--header-timeout-s must be > 0 and finite"),
    (["--max-answer-mb", "nan"], 2, "--max-answer-mb must be > 0 and finite"),
])
def test_cli_usage_errors(repo, capsys, args, code, fragment):
    if args[0] == "--provider" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    argv = ["serve", *(args if args[0].endswith(".onnx") else [str(repo / "mlp.onnx"), *args])]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_corrupt_model_and_busy_port(tmp_path, repo, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert main(["serve", str(tmp_path / "broken.onnx")]) == 1
    assert "broken.onnx: cannot load the ONNX model" in capsys.readouterr().err
    busy = bind_socket("127.0.0.1", 0)
    try:
        assert main(["serve", str(repo / "mlp.onnx"), "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    finally:
        busy.close()
