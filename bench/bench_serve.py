"""Bounded load test of ``dnnspec serve`` on 127.0.0.1, with and without dynamic batching.

    python bench/bench_serve.py                     # 5 rounds of 5,000 requests, concurrency 32, windows 0 and 2 ms
    python bench/bench_serve.py --requests 500 --windows 0,1,5 --rounds 1 --json out.json

For each batch window it starts ``python -m dnnspec serve`` in a subprocess on a free
loopback port with an MLP 784-256-128-10 (random weights), then sends a fixed number of
single-row requests from ``--concurrency`` keep-alive connections. The client is a small
asyncio HTTP/1.1 loop over pre-encoded requests (binary tensor data, as tritonclient
sends by default), so that it costs little CPU next to the server. Every response is
checked: status 200 and probabilities equal to a direct onnxruntime call (bit for bit).
Reports requests/s, p50/p99 latency, failures, and the server's own count of
session.run calls (its statistics endpoint), hence the mean rows per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def mlp(path: Path, sizes: list[int], seed: int = 0) -> Path:
    """Write an exporter-shaped MLP (input (N, sizes[0]) -> probabilities, logits) to ``path``."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), f"k{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"k{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [out + "r"]))
            out += "r"
        prev = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", d])
          for n, d in (("input", sizes[0]), ("probabilities", sizes[-1]), ("logits", sizes[-1]))]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def encode_requests(xs: np.ndarray, port: int) -> list[bytes]:
    """One pre-encoded HTTP request per row: binary input, binary probabilities out."""
    reqs = []
    for x in xs:
        raw = x[None].astype("<f4").tobytes()
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, x.size], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
        body = head + raw
        reqs.append((f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return reqs


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    """(status, lower-case headers, body) of one HTTP/1.1 response: one read for the head."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def load(port: int, reqs: list[bytes], expected: np.ndarray, total: int, concurrency: int) -> dict:
    """Send ``total`` requests over ``concurrency`` connections; latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    next_index = iter(range(total))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in next_index:
            j = i % len(reqs)
            t0 = time.perf_counter()
            writer.write(reqs[j])
            try:
                status, headers, body = await read_response(reader)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError,
                    IndexError) as e:
                failures.append(f"request {i}: {type(e).__name__}")
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - t0)
            head = int(headers.get("inference-header-content-length", len(body)))
            if status != 200 or not np.array_equal(np.frombuffer(body[head:], "<f4"), expected[j]):
                failures.append(f"request {i}: status {status} {body[:head][:200]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": total, "failed": len(failures), "seconds": wall, "requests_per_s": total / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "first_failures": failures[:5]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def start_server(model: Path, port: int, window_ms: float, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dnnspec", "serve", str(model), "--port", str(port),
           "--batch-window-ms", str(window_ms), "--max-batch", str(args.max_batch), "--threads", str(args.threads),
           "--workers", str(args.workers)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": path}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get_json(port, "/v2/health/ready")["ready"]:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def run_client(coro):
    """Run the load generator on uvloop when it is installed (as the server does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def bench_window(model: Path, window_ms: float, xs: np.ndarray, expected: np.ndarray, args) -> dict:
    port = free_port()
    proc = start_server(model, port, window_ms, args)
    try:
        reqs = encode_requests(xs, port)
        run_client(load(port, reqs, expected, min(200, args.requests), args.concurrency))  # warm-up
        before = get_json(port, "/v2/models/mlp/stats")["model_stats"][0]
        result = run_client(load(port, reqs, expected, args.requests, args.concurrency))
        after = get_json(port, "/v2/models/mlp/stats")["model_stats"][0]
    finally:
        proc.terminate()
        proc.wait(30)
    runs = after["execution_count"] - before["execution_count"]
    rows = after["inference_count"] - before["inference_count"]
    return {"window_ms": window_ms, **result, "session_runs": runs, "rows_per_run": rows / max(runs, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--windows", default="0,2", help="comma-separated batch windows in ms (0 = batching off)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (server --threads)")
    p.add_argument("--workers", type=int, default=1, help="server processes (server --workers)")
    p.add_argument("--sizes", default="784,256,128,10", help="MLP layer widths, input first")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds; each runs every window once, so a round's ratios compare runs seconds apart")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = mlp(Path(tmp) / "mlp.onnx", sizes)
        xs = np.random.default_rng(1).random((64, sizes[0]), dtype=np.float32)
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        expected = np.concatenate([sess.run(["probabilities"], {"input": x[None]})[0] for x in xs])
        windows = [float(w) for w in args.windows.split(",")]
        rounds = [[bench_window(model, w, xs, expected, args) for w in windows] for _ in range(args.rounds)]
    try:
        import httptools  # noqa: F401  (uvicorn's fast HTTP parser, used when installed)
        parser = "httptools"
    except ImportError:
        parser = "h11 (pip install httptools uvloop for a faster server)"
    print(f"MLP {'-'.join(map(str, sizes))}, {args.requests} requests at concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs, {args.workers} server worker(s), HTTP parser {parser}")
    print(f"{'round':>5} {'window ms':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'runs':>6} "
          f"{'rows/run':>8}")
    for i, results in enumerate(rounds, 1):
        for r in results:
            print(f"{i:>5} {r['window_ms']:>9g} {r['requests_per_s']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
                  f"{r['failed']:>6} {r['session_runs']:>6} {r['rows_per_run']:>8.1f}")
            for f in r["first_failures"]:
                print("   ", f)
    if args.workers > 1:
        print("(runs and rows/run come from the statistics of whichever worker answered: one worker's share)")
    medians = [statistics.median(r[k]["requests_per_s"] for r in rounds) for k in range(len(windows))]
    print("median req/s: " + ", ".join(f"window {w:g} ms {m:.0f}" for w, m in zip(windows, medians))
          + f"; failed requests in all rounds: {sum(r['failed'] for rs in rounds for r in rs)}")
    if len(windows) > 1 and windows[0] == 0:
        for k, w in enumerate(windows[1:], 1):
            ratios = [r[k]["requests_per_s"] / r[0]["requests_per_s"] for r in rounds]
            print(f"speed-up of window {w:g} ms over no batching, per round: {' '.join(f'{v:.2f}x' for v in ratios)}; "
                  f"median {statistics.median(ratios):.2f}x (target >= 3x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
