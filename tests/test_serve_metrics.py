"""``GET /metrics`` of ``dnnspec serve``: scraped from real servers and parsed with prometheus_client's own
parser; every count is checked exactly against the requests sent (and the runs against the statistics
endpoint, counted by other code)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
from prometheus_client import CollectorRegistry, Counter  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from test_serve import FEATURES, Running, binary_infer, cli_server, json_infer, request, rows, write_repository  # noqa: E402

from dnnspec.serve.metrics import REASONS, batch_buckets, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = [("mlp", "1"), ("tri", "1"), ("tri", "2")]
LATENCY = "dnnspec_inference_request_duration_seconds"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_repository(tmp_path_factory.mktemp("metrics") / "models")


def scrape(port: int) -> tuple[dict, str]:
    """({(sample name, sorted label items): value}, raw text) of ``GET /metrics``, parsed by prometheus_client."""
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    text = body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return samples, text


def value(samples: dict, name: str, model: str, version: str = "1", **labels) -> float:
    return samples[(name, tuple(sorted({"model": model, "version": version, **labels}.items())))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the command, one process

def test_scrape_counts_requests_failures_rows_and_runs_exactly(repo):
    """Window 0 (each request one run): 3 good requests of 1, 2 and 4 rows and one for tri (v2, the
    newest); 3 bad ones (two refused before running, one after: top_k 9 > 5 classes); unknown model and
    version (no series: no client can add label values)."""
    with cli_server([str(repo), "--batch-window-ms", "0"]) as (proc, port, _):
        for n in (1, 2, 4):
            assert request(port, "POST", "/v2/models/mlp/infer", *binary_infer(rows(n, seed=n)))[0] == 200
        assert request(port, "POST", "/v2/models/tri/infer", *binary_infer(rows(3)))[0] == 200
        good = rows(1).ravel().tolist()
        bad = [("mlp", b'{"inputs": [', 400), ("mlp", json_infer([1, FEATURES - 1], good[:-1]), 400),
               ("mlp", json_infer([1, FEATURES], good, parameters={"top_k": 9}), 400),
               ("nope", json_infer([1, FEATURES], good), 404), ("tri/versions/7", json_infer([1, FEATURES], good), 404)]
        for path, body, status in bad:
            assert request(port, "POST", f"/v2/models/{path}/infer", body)[0] == status
        samples, text = scrape(port)
        assert scrape(port)[0] == samples  # a scrape changes nothing

    expected = {  # (model, version): (successes, OTHER failures, rows run, runs)
        ("mlp", "1"): (3, 3, 1 + 2 + 4 + 1, 4), ("tri", "1"): (0, 0, 0, 0), ("tri", "2"): (1, 0, 3, 1)}
    for (model, version), (ok, other, inferences, runs) in expected.items():
        assert value(samples, "nv_inference_request_success_total", model, version) == ok
        assert value(samples, LATENCY + "_count", model, version) == ok
        for reason in REASONS:
            got = value(samples, "nv_inference_request_failure_total", model, version, reason=reason)
            assert got == (other if reason == "OTHER" else 0), (model, version, reason)
        assert value(samples, "nv_inference_count_total", model, version) == inferences
        assert value(samples, "nv_inference_exec_count_total", model, version) == runs
        assert value(samples, "dnnspec_inference_batch_size_count", model, version) == runs
        assert value(samples, "dnnspec_inference_batch_size_sum", model, version) == inferences
        assert (value(samples, "nv_inference_request_duration_us_total", model, version)
                == pytest.approx(value(samples, LATENCY + "_sum", model, version) * 1e6))
    # batch sizes 1, 2, 4, 1 (the top_k request): cumulative buckets
    buckets = [value(samples, "dnnspec_inference_batch_size_bucket", "mlp", le=le) for le in ("1.0", "2.0", "4.0")]
    assert buckets == [2, 3, 4]
    assert value(samples, LATENCY + "_sum", "mlp") > 0
    assert value(samples, "nv_inference_compute_infer_duration_us_total", "mlp") > 0
    assert not any(dict(labels).get("model") == "nope" for _, labels in samples)
    # Triton's names: counters without prometheus_client's _total suffix, and no _created series
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "\nnv_inference_request_failure{model=\"mlp\",reason=\"OTHER\",version=\"1\"} 3.0\n" in text
    assert "_total" not in text and "_created" not in text


# ---------------------------------------------------------------- in-process servers

def test_batched_runs_agree_with_the_statistics_endpoint(repo):
    """16 concurrent requests on a long window: a few runs. The runs and rows the metrics count equal
    those of /v2/models/mlp/stats (counted in ServedModel.run), and the queue time is at least the idle gap."""
    server = Running(repo, batch_window_ms=2000, max_batch=64)
    try:
        xs = [rows(1 + i % 3, seed=100 + i) for i in range(16)]
        barrier = threading.Barrier(len(xs))
        statuses = []

        def one(x) -> None:
            barrier.wait()
            statuses.append(server.request("POST", "/v2/models/mlp/infer", *binary_infer(x))[0])

        threads = [threading.Thread(target=one, args=(x,)) for x in xs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert statuses == [200] * 16
        stats = server.stats("mlp")
        samples, _ = scrape(server.port)
    finally:
        server.stop()
    assert value(samples, "nv_inference_request_success_total", "mlp") == 16
    assert value(samples, "nv_inference_exec_count_total", "mlp") == stats["execution_count"] <= 4
    assert value(samples, "nv_inference_count_total", "mlp") == stats["inference_count"] == sum(map(len, xs))
    assert value(samples, "dnnspec_inference_batch_size_count", "mlp") == stats["execution_count"]
    # every batch waited out at least its idle gap (2 s / 8) after its last request joined
    assert value(samples, "nv_inference_queue_duration_us_total", "mlp") >= 0.25e6


def test_failure_reasons_backend_rejected_canceled(repo):
    """A model that raises (500, BACKEND), an inference past --timeout-s (503, REJECTED), a client gone
    mid-body (CANCELED): each counted once under its reason, nothing counted as a success."""
    server = Running(repo, batch_window_ms=0, timeout_s=0.5)
    try:
        batcher = server.state.batchers[("mlp", "1")]

        def broken(inputs):
            raise RuntimeError("onnxruntime failed")

        batcher.model.run = broken
        assert server.request("POST", "/v2/models/mlp/infer", *binary_infer(rows(1)))[0] == 500
        del batcher.model.run

        def stuck(inputs, rows):  # a future nobody completes
            return asyncio.get_running_loop().create_future()

        batcher.submit = stuck
        assert server.request("POST", "/v2/models/mlp/infer", *binary_infer(rows(1)))[0] == 503
        del batcher.submit
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # gone mid-body
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in")
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while value(scrape(server.port)[0], "nv_inference_request_failure_total", "mlp", reason="CANCELED") < 1:
            assert time.monotonic() < deadline, "the disconnect was not counted"
            time.sleep(0.05)
        assert server.request("POST", "/v2/models/mlp/infer", *binary_infer(rows(2)))[0] == 200
        samples, _ = scrape(server.port)
    finally:
        server.stop()
    for reason in REASONS:
        assert value(samples, "nv_inference_request_failure_total", "mlp", reason=reason) == (
            0 if reason == "OTHER" else 1), reason
    assert value(samples, "nv_inference_request_success_total", "mlp") == 1
    assert value(samples, "nv_inference_exec_count_total", "mlp") == 1  # the failed run is not an execution
    assert value(samples, "nv_inference_count_total", "mlp") == 2


# ---------------------------------------------------------------- --workers 2

@pytest.mark.slow
def test_two_workers_report_the_sum_of_both(repo, tmp_path):
    """With --workers 2 any worker answers a scrape with both workers' counts (prometheus_client's
    multiprocess mode in a temporary folder of the server's own, removed at exit). The statistics
    endpoint counts per worker, which shows that both served requests."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    sent, per_worker, scrapes = 0, set(), []
    with cli_server([str(repo / "mlp.onnx"), "--workers", "2", "--port", str(free_port())],
                    env={"TMPDIR": str(tmp)}) as (proc, port, _):
        assert len(list(tmp.glob("dnnspec-metrics-*"))) == 1
        for _ in range(5):  # bursts of concurrent requests until the statistics show both workers served
            threads = [threading.Thread(target=lambda: request(port, "POST", "/v2/models/mlp/infer",
                                                               *binary_infer(rows(1)))) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            sent += 8
            for _ in range(8):
                per_worker.add(json.loads(request(port, "GET", "/v2/models/mlp/stats")[2])["model_stats"][0][
                    "inference_count"])
                scrapes.append(value(scrape(port)[0], "nv_inference_request_success_total", "mlp"))
            if min(per_worker) < sent:
                break
        final = [value(scrape(port)[0], "nv_inference_count_total", "mlp") for _ in range(4)]
    assert min(per_worker) < sent, per_worker  # one worker alone had not seen them all
    assert scrapes[-8:] == [sent] * 8 and final == [sent] * 4
    assert list(tmp.glob("dnnspec-metrics-*")) == []


# ---------------------------------------------------------------- pieces

def test_without_prometheus_client_the_command_says_what_to_install(repo):
    code = ("import sys; sys.modules['prometheus_client'] = None; from dnnspec.cli import main; "
            f"sys.exit(main(['serve', {str(repo / 'mlp.onnx')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "dnnspec: error: dnnspec serve needs 'prometheus_client': pip install 'dnnspec[serve]'\n"



def test_render_strips_total_from_nv_counters_only():
    reg = CollectorRegistry()
    Counter("nv_inference_exec_count", "runs", ["model"], registry=reg).labels("a_total").inc(3)
    Counter("requests", "other", registry=reg).inc()
    text = render(reg).decode()
    assert "# TYPE nv_inference_exec_count counter\n" in text
    assert 'nv_inference_exec_count{model="a_total"} 3.0\n' in text  # label values are left alone
    assert "# TYPE requests_total counter\n" in text and "requests_total 1.0\n" in text


def test_batch_buckets_reach_the_largest_run():
    assert batch_buckets(1) == (1.0,)
    assert batch_buckets(64) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    assert batch_buckets(100)[-2:] == (64.0, 128.0)
