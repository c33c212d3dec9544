"""Prometheus metrics at ``GET /metrics``, under Triton's names where Triton has one.

Per model version (labels ``model`` and ``version``; only models the server holds, so no
request can add a label value):

================================================ ========= ================================================
``nv_inference_request_success``                 counter   requests answered 200
``nv_inference_request_failure{reason}``         counter   requests answered with an error; ``reason`` is
                                                           Triton's: ``REJECTED`` (timed out, ``--timeout-s``),
                                                           ``CANCELED`` (client gone), ``BACKEND`` (the model
                                                           failed), ``OTHER`` (a bad request)
``nv_inference_count``                           counter   rows run (a request of n rows counts n)
``nv_inference_exec_count``                      counter   onnxruntime runs (count / exec_count = rows per run)
``nv_inference_request_duration_us``             counter   summed end-to-end time of the successful requests
``nv_inference_queue_duration_us``               counter   summed time requests waited for their run
``nv_inference_compute_infer_duration_us``       counter   summed run time, each request counting its run's
``dnnspec_inference_request_duration_seconds``   histogram end-to-end time of the successful requests
``dnnspec_inference_batch_size``                 histogram rows per onnxruntime run
================================================ ========= ================================================

Cost on the request path: one histogram observation per successful request (about 1 µs)
or one counter increment per failed one; the rest is updated once per onnxruntime run.
``nv_inference_request_success`` and ``nv_inference_request_duration_us`` are not counted
separately: they are the latency histogram's ``_count`` and ``_sum`` (times 10^6), read off
it at scrape time, so they can never disagree with it.

Triton's exposition (text format 0.0.4) names its counters without the ``_total`` suffix
that prometheus_client gives every counter; :func:`render` takes it off the ``nv_`` counters,
so that dashboards and alerts written for Triton work unchanged.

With ``--workers N`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; :func:`worker_directory`
makes that a fresh temporary folder) and a scrape, answered by any one worker, sums them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

from prometheus_client import CollectorRegistry, Counter, Histogram, Metric, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Triton's; it allows counters without _total
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Triton's failure reasons (``nv_inference_request_failure{reason=...}``).
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
#: End-to-end latency buckets, in seconds: a small batched MLP answers in ~0.2-5 ms.
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY = "dnnspec_inference_request_duration_seconds"
_LABELS = ("model", "version")
_NV_TOTAL = re.compile(rb"^(# (?:HELP|TYPE) )?(nv_\w+?)_total\b", re.MULTILINE)


def batch_buckets(most_rows: int) -> tuple[float, ...]:
    """Powers of two from 1 up to the first at or above ``most_rows`` (the largest possible run)."""
    bounds, b = [], 1
    while True:
        bounds.append(float(b))
        if b >= most_rows:
            return tuple(bounds)
        b *= 2


class ModelMetrics:
    """One model version's metric children, bound to their labels once (no label lookup per request)."""

    __slots__ = ("latency", "failures", "inferences", "executions", "compute_us", "queue_us", "batch_rows")

    def __init__(self, families: ServeMetrics, name: str, version: str):
        self.latency = families.latency.labels(name, version)
        self.failures = {r: families.failure.labels(name, version, r) for r in REASONS}
        self.inferences = families.inferences.labels(name, version)
        self.executions = families.executions.labels(name, version)
        self.compute_us = families.compute_us.labels(name, version)
        self.queue_us = families.queue_us.labels(name, version)
        self.batch_rows = families.batch_rows.labels(name, version)

    def succeeded(self, seconds: float) -> None:
        """A request answered 200, ``seconds`` after it reached the app."""
        self.latency.observe(seconds)

    def failed(self, reason: str) -> None:
        self.failures[reason].inc()

    def ran(self, rows: int, requests: int, run_s: float, queued_s: float) -> None:
        """One onnxruntime run of ``rows`` rows from ``requests`` requests, which waited ``queued_s`` in all.

        Each request counts its run's ``run_s`` (as Triton counts compute time per request).
        """
        self.inferences.inc(rows)
        self.executions.inc()
        self.compute_us.inc(run_s * 1e6 * requests)
        self.queue_us.inc(queued_s * 1e6)
        self.batch_rows.observe(rows)


class ServeMetrics:
    """The metric families of one server, in a registry of its own (several servers may share a process)."""

    def __init__(self, most_rows: int):
        self.multiprocess = MULTIPROC_ENV in os.environ  # prometheus_client read it when first imported, too
        self.registry = CollectorRegistry()
        reg = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = _LABELS) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        self.latency = Histogram(LATENCY, "End-to-end time of successful inference requests (from their "
                                 "headers to their encoded answer)", _LABELS, registry=reg, buckets=LATENCY_BUCKETS)
        self.failure = counter("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                               (*_LABELS, "reason"))
        self.inferences = counter("nv_inference_count", "Number of inferences performed (rows run)")
        self.executions = counter("nv_inference_exec_count", "Number of model executions performed (onnxruntime runs)")
        self.compute_us = counter("nv_inference_compute_infer_duration_us",
                                  "Cumulative compute inference duration in microseconds (each request counts "
                                  "its run)")
        self.queue_us = counter("nv_inference_queue_duration_us", "Cumulative inference queuing duration in "
                                "microseconds")
        self.batch_rows = Histogram("dnnspec_inference_batch_size", "Rows per model execution (onnxruntime run)",
                                    _LABELS, registry=reg, buckets=batch_buckets(most_rows))

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def render(self) -> bytes:
        """The exposition: this process's values, or with ``--workers`` every worker's, summed."""
        source = self.registry
        if self.multiprocess:
            source = CollectorRegistry()
            MultiProcessCollector(source)
        return render(_TritonView(source))


def render(collector) -> bytes:
    """Text format 0.0.4, with Triton's counter names (no ``_total`` on the ``nv_`` counters)."""
    return _NV_TOTAL.sub(rb"\1\2", generate_latest(collector))


class _TritonView:
    """A collector showing ``source`` without ``_created`` samples, plus the two counters read off the latency
    histogram: ``nv_inference_request_success`` (its ``_count``) and ``nv_inference_request_duration_us``
    (its ``_sum`` in microseconds)."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        for family in self.source.collect():
            kept = [s for s in family.samples if not s.name.endswith("_created")]
            if len(kept) != len(family.samples):
                family = _family(family.name, family.documentation, family.type,
                                 [(s.name, s.labels, s.value) for s in kept])
            yield family
            if family.name == LATENCY:
                yield _family("nv_inference_request_success", "Number of successful inference requests, all "
                              "batch sizes", "counter", [("nv_inference_request_success", s.labels, s.value)
                                                         for s in family.samples if s.name == LATENCY + "_count"])
                yield _family("nv_inference_request_duration_us", "Cumulative inference request duration in "
                              "microseconds", "counter", [("nv_inference_request_duration_us", s.labels, s.value * 1e6)
                                                          for s in family.samples if s.name == LATENCY + "_sum"])


def _family(name: str, doc: str, kind: str, samples: list[tuple[str, dict, float]]) -> Metric:
    family = Metric(name, doc, kind)
    for sample in samples:
        family.add_sample(*sample)
    return family


@contextlib.contextmanager
def worker_directory():
    """``PROMETHEUS_MULTIPROC_DIR`` set to a fresh temporary folder while ``--workers`` processes run, then removed.

    A folder of its own, because values left in it by an earlier server would be summed in.
    The workers are spawned (new interpreters), so they import prometheus_client with it set.
    """
    path = tempfile.mkdtemp(prefix="dnnspec-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)
