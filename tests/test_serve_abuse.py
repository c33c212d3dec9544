"""`dnnspec serve` abused by one client: repeated outputs, huge answers, huge headers (HTTP and
inference), nested JSON, stalled heads and bodies, more idle connections than the open-file
limit allows. Each is answered or closed as docs/serving.md says, and a normal request right
after is still answered bit for bit like onnxruntime.

One real server process (the CLI) on a loopback port, its open-file limit lowered to 256 so
that 300 idle connections would exhaust it; every loop is bounded and the server is stopped
by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_serve import FEATURES, binary_infer, cli_server, json_infer, reference, request, rows, write_repository

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's /proc entries")

ROOT = Path(__file__).resolve().parents[1]
OPEN_FILES = 256
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
OPTIONS = ["--batch-window-ms", "0", "--header-timeout-s", str(HEADER_TIMEOUT_S), "--keep-alive-s", "1",
           "--timeout-s", str(BODY_TIMEOUT_S), "--max-header-kb", "16", "--max-answer-mb", "0.1"]


def _few_open_files() -> None:  # runs in the server process before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, announce: str, model: Path):
        self.proc, self.port, self.announce, self.model = proc, port, announce, model

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body) of one request on a fresh connection."""
        return request(self.port, method, path, body, headers)

    def infer(self, body: bytes, headers: dict | None = None):
        return self.request("POST", "/v2/models/mlp/infer", body, headers)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def still_answers_right(self, seed: int = 0) -> None:
        """A normal binary request: 200 and probabilities bit-identical to onnxruntime's."""
        x = rows(5, seed=seed)
        body, headers = binary_infer(x)
        status, resp_headers, raw = self.infer(body, headers)
        assert status == 200, raw
        head_len = int(resp_headers.get("inference-header-content-length", len(raw)))
        out = json.loads(raw[:head_len])["outputs"][0]
        got = np.array(out["data"], np.float32).reshape(out["shape"])
        assert np.array_equal(got, reference(self.model, x)["probabilities"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = write_repository(tmp_path_factory.mktemp("abuse") / "models") / "mlp.onnx"
    with cli_server([str(model), *OPTIONS], preexec_fn=_few_open_files, ready_s=20) as (proc, port, announce):
        yield Server(proc, port, announce, model)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection, then read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_error(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_the_connection_cap_fits_the_open_file_limit(server):
    assert f"at most {OPEN_FILES - 64} connections, lowered to fit the open-file limit of {OPEN_FILES}" in (
        server.announce)


def test_repeated_outputs_are_refused(server):
    """2,000 copies of one output over 256 rows made a 111 MB answer and a 505 MB server."""
    x = rows(256, seed=1)
    body = json_infer([256, FEATURES], x.ravel().tolist(), outputs=[{"name": "probabilities"}] * 2000)
    t0 = time.monotonic()
    status, _, raw = server.infer(body)
    assert status == 400 and json.loads(raw)["error"] == (
        "output 'probabilities' is asked for more than once; name each output once")
    assert time.monotonic() - t0 < 5
    server.still_answers_right(1)


def test_an_answer_over_the_limit_is_refused_and_binary_fits(server):
    """--max-answer-mb 0.1: 1,000 rows of both outputs as JSON could take 250 KB (refused before
    encoding); the same rows in binary (40 KB) are answered."""
    x = rows(1000, seed=2)
    status, _, raw = server.infer(json_infer([1000, FEATURES], x.ravel().tolist()))
    assert status == 400
    assert "over the limit of 104,857 bytes (--max-answer-mb 0.1)" in json.loads(raw)["error"]
    body, headers = binary_infer(x)
    status, _, raw = server.infer(body, {**headers, "Content-Type": "application/octet-stream"})
    assert status == 400  # binary inputs, JSON outputs: still too big
    big = json.loads(body[:int(headers["Inference-Header-Content-Length"])])
    big["parameters"] = {"binary_data_output": True}
    head = json.dumps(big).encode()
    status, resp_headers, raw = server.infer(head + body[int(headers["Inference-Header-Content-Length"]):],
                                             {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200
    head_len = int(resp_headers["inference-header-content-length"])
    outputs = json.loads(raw[:head_len])["outputs"]
    got = np.frombuffer(raw[head_len:head_len + outputs[0]["parameters"]["binary_data_size"]], "<f4")
    assert np.array_equal(got.reshape(1000, -1), reference(server.model, x)["probabilities"])
    server.still_answers_right(2)


@pytest.mark.parametrize("pieces", [1, 8], ids=["at-once", "in-pieces"])
def test_huge_http_headers_get_431(server, pieces):
    head = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        step = -(-len(head) // pieces)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # the server may stop reading
            for i in range(0, len(head), step):
                sock.sendall(head[i:i + step])
                time.sleep(0.05 if pieces > 1 else 0)
        reply = read_to_close(sock)
    assert status_and_error(reply) == (431, "request line and headers are over the limit of 16384 bytes")
    status, _, _ = server.request("GET", "/v2/health/ready", headers={"X-Fine": "a" * 8000})
    assert status == 200
    server.still_answers_right(3)


def test_huge_inference_headers_are_not_kept(server):
    """40 valid requests with 4 MiB JSON headers used to stay in the plan cache: 157 MiB resident."""
    x = rows(2, seed=4)
    raw = x.astype("<f4").tobytes()

    def send(i: int) -> None:
        head = json.dumps({"inputs": [{"name": "input", "shape": [2, FEATURES], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
                           "parameters": {"pad": f"{i:03d}" + " " * (4 << 20)}}).encode()
        status, headers, answer = server.infer(head + raw, {"Inference-Header-Content-Length": str(len(head))})
        assert status == 200, answer
        head_len = int(headers["inference-header-content-length"])
        assert np.array_equal(np.frombuffer(answer[head_len:], "<f4").reshape(2, -1),
                              reference(server.model, x)["probabilities"])

    for i in range(3):  # warm up: the first big bodies grow the allocator's arenas
        send(i)
    before = server.rss_mib()
    for i in range(3, 43):
        send(i)
    assert server.rss_mib() - before < 40, (before, server.rss_mib())
    server.still_answers_right(4)


def test_nested_json_gets_400(server):
    deep_data = b'{"inputs": [{"name": "input", "data": ' + b"[" * 50_000 + b"1" + b"]" * 50_000 + b"}]}"
    for body in (b"[" * 100_000, deep_data):
        status, _, raw = server.infer(body)
        assert status == 400 and "nested too deeply" in json.loads(raw)["error"], raw
    server.still_answers_right(5)


def test_stalled_heads_and_bodies_are_timed_out(server):
    """An unfinished head gets 408 after --header-timeout-s, even trickled a byte at a time; a
    connection that sends nothing is closed; an unfinished infer body gets 408 after --timeout-s."""
    t0 = time.monotonic()
    reply = raw_exchange(server.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
    assert status_and_error(reply) == (408, f"request headers not received within {HEADER_TIMEOUT_S:g} s")
    assert HEADER_TIMEOUT_S - 0.2 < time.monotonic() - t0 < HEADER_TIMEOUT_S + 3

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: ...":  # one byte every 0.25 s
                sock.sendall(bytes([byte]))
                time.sleep(0.25)
                if time.monotonic() - t0 > HEADER_TIMEOUT_S + 3:
                    break
        reply = read_to_close(sock)
    assert status_and_error(reply)[0] == 408 and time.monotonic() - t0 < HEADER_TIMEOUT_S + 3

    t0 = time.monotonic()
    assert raw_exchange(server.port, b"") == b""  # nothing sent: closed without an answer
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 3

    reply = raw_exchange(server.port, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert status_and_error(reply)[1] == f"request body not received within {BODY_TIMEOUT_S:g} s"
    server.still_answers_right(6)


def test_many_idle_connections_do_not_lock_out_new_clients(server):
    """300 idle connections against an open-file limit of 256 (a cap of 192): new clients are
    still answered at once (the quietest idle connection makes room), and every idle one is
    closed by the head deadline."""
    idle = []
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):  # a connection the server dropped while full
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.2)
        t0 = time.monotonic()
        assert server.request("GET", "/v2/health/ready")[0] == 200
        server.still_answers_right(7)
        assert time.monotonic() - t0 < 1.0  # not after the head deadline (2 s)
        assert len(os.listdir(f"/proc/{server.proc.pid}/fd")) <= OPEN_FILES - 32
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
        for sock in idle:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            assert read_to_close(sock) == b""  # closed without an answer (timeout raises instead)
    finally:
        for sock in idle:
            sock.close()
    server.still_answers_right(8)
