"""The HTTP/REST side of the Open Inference Protocol, as a Starlette app on uvicorn.

Routes (``{v}`` parts optional; without one the highest version answers):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata)
- ``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``, ``.../config``, ``.../stats``
- ``POST /v2/models/{name}[/versions/{v}]/infer``
- ``GET /metrics``: Prometheus metrics, under Triton's names where Triton has one (see :mod:`.metrics`)

Every error is ``{"error": "..."}`` with a 4xx status for the client's mistakes (400 bad
request or an answer over ``--max-answer-mb``, 404 unknown model or version, 408 head or
body too slow, 413 body too large, 431 head too large) and 5xx for the server's (503
inference timed out or every connection busy, 500 a bug). Connection limits: see :mod:`.guard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..errors import UsageError
from .batching import Batcher
from .guard import LIMITS_KEY, ConnectionLimits, fit_open_files, protocol_class
from .metrics import CONTENT_TYPE, ServeMetrics, worker_directory
from .models import Repository, ServedModel, load_repository
from .protocol import (
    TOP_K_CLASSES,
    TOP_K_SCORES,
    BoundedCache,
    InferenceError,
    InferRequest,
    OutputRequest,
    answer_bound,
    binary_chunk,
    classification,
    encode_response,
    json_bytes,
    output_entry,
    parse_infer_request,
    top_k,
)

SERVER_NAME = "dnnspec"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
CONFIG_ENV = "DNNSPEC_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``dnnspec serve`` was told; the app's only input besides the models."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    provider: str = "cpu"
    max_batch: int = 64
    batch_window_ms: float = 2.0
    max_body_mb: float = 64.0
    max_rows: int = 1024
    timeout_s: float = 30.0
    threads: int = 1
    max_answer_mb: float = 64.0
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_header_kb: float = 64.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_answer_bytes(self) -> int:
        return int(self.max_answer_mb * 1024 * 1024)

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_connections, self.header_timeout_s, int(self.max_header_kb * 1024))


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json_bytes(body), status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


class Server:
    """The app's state: models, their batchers, limits; one per process."""

    def __init__(self, repository: Repository, config: ServeConfig):
        self.repository = repository
        self.config = config
        self.ready = False
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="infer")
        window = config.batch_window_ms / 1000.0
        self.metrics = ServeMetrics(max(config.max_batch, config.max_rows))  # the largest run either way
        self.batchers = {(m.name, m.version): Batcher(m, config.max_batch, window, self.pool,
                                                      self.metrics.model(m.name, m.version))
                         for m in repository.all()}
        self.deadlines = Deadlines(config.timeout_s)
        self._heads = BoundedCache(entries=256, nbytes=1 << 20, item_bytes=64 << 10)  # see _encode

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """Ready while serving; the lifespan state hands the connection limits to :mod:`.guard`."""
        self.ready = True
        try:
            yield {LIMITS_KEY: self.config.connection_limits}
        finally:  # uvicorn has finished the requests in flight by now
            self.ready = False
            await self.deadlines.close()
            for b in self.batchers.values():
                await b.close()
            self.pool.shutdown(wait=True)

    # ---------------------------------------------------------------- routes

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [Route("/v2/health/live", self.live), Route("/v2/health/ready", self.health_ready),
                  Route("/v2", self.server_metadata), Route("/v2/models/stats", self.stats),
                  Route("/metrics", self.prometheus)]
        for base in (model, versioned):
            routes += [Route(base, self.model_metadata), Route(base + "/ready", self.model_ready),
                       Route(base + "/config", self.model_config), Route(base + "/stats", self.stats),
                       Route(base + "/infer", self.infer_other, methods=["POST"])]
        return routes

    async def infer_other(self, request: Request) -> Response:
        """Only reached if InferFront is bypassed (it answers POST .../infer itself): same answer."""
        parts = request.path_params
        result: dict = {}

        async def send(message: dict) -> None:
            result.setdefault("parts", []).append(message)

        await self.infer_asgi(parts["name"], parts.get("version"), request.scope, request.receive, send)
        start, body = result["parts"]
        return Response(body["body"], start["status"], headers={k.decode(): v.decode() for k, v in start["headers"]})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def health_ready(self, request: Request) -> Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    def _model(self, request: Request) -> ServedModel:
        return self.repository.get(request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(self, request: Request) -> Response:
        m = self._model(request)
        return json_response(m.metadata(self.repository.versions(m.name)))

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def model_config(self, request: Request) -> Response:
        """A Triton-style model configuration (dims without the batch dim when batching)."""
        m = self._model(request)
        batched = m.batchable

        def tensors(specs):
            return [{"name": s.name, "data_type": f"TYPE_{s.datatype}",
                     "dims": list(s.shape[1:] if batched else s.shape)} for s in specs]

        config = {"name": m.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
                  "max_batch_size": self.config.max_batch if batched else 0,
                  "input": tensors(m.inputs), "output": tensors(m.outputs)}
        if self.batchers[(m.name, m.version)].enabled:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": int(self.config.batch_window_ms * 1000)}
        return json_response(config)

    async def stats(self, request: Request) -> Response:
        """Counters in the shape of Triton's statistics extension."""
        if "name" in request.path_params:
            models = [self._model(request)]
        else:
            models = self.repository.all()
        return json_response({"model_stats": [
            {"name": m.name, "version": m.version, "last_inference": m.stats.last_inference_ms,
             "inference_count": m.stats.inference_count, "execution_count": m.stats.execution_count}
            for m in models]})

    async def prometheus(self, request: Request) -> Response:
        """Prometheus text format 0.0.4 (what Triton serves on its metrics port)."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # ---------------------------------------------------------------- inference

    async def infer_asgi(self, name: str, version: str | None, scope: dict, receive, send) -> None:
        """``POST .../infer`` as a plain ASGI handler: read, check, run (possibly batched), answer.

        This is the hot path, so it skips Starlette's request/response objects, router and
        middleware stack, which cost about as much CPU per request as everything else
        here together (py-spy, 2 ms window: ~60 % of the server's samples were under
        Starlette's call chain); :class:`InferFront` routes it here. Errors become the
        same ``{"error": ...}`` responses as on every other route. Metrics: one latency
        observation per success, one failure count per error (for a model this server has).
        """
        start = time.perf_counter()
        limit_s = self.config.timeout_s
        phase = "body"
        task = asyncio.current_task()
        batcher = None
        try:
            headers = {k: v for k, v in scope["headers"] if k in _INFER_HEADERS}
            m = self.repository.get(name, version)
            batcher = self.batchers[(m.name, m.version)]
            self.deadlines.add(task)  # one deadline for the body and the inference
            try:
                body = await self._read_body(receive, headers)
                ihcl = headers.get(b"inference-header-content-length")
                req = parse_infer_request(body, None if ihcl is None else ihcl.decode("latin-1"), m.inputs,
                                          m.output_names, self.config.max_rows,
                                          check_finite=not batcher.enabled)  # else once per batch
                phase = "inference"
                outputs = await batcher.submit(req.inputs, req.rows)
                phase = "answer"
            except asyncio.CancelledError:
                if not self.deadlines.expired(task):
                    raise  # cancelled for another reason (shutdown): not ours to answer
                if phase == "body":
                    raise InferenceError(f"request body not received within {limit_s:g} s", 408) from None
                raise InferenceError(f"inference timed out after {limit_s:g} s", 503, "REJECTED") from None
            finally:
                self.deadlines.discard(task)
            content, extra = self._encode(m, req, outputs)
            status = 200
            batcher.metrics.succeeded(time.perf_counter() - start)
        except InferenceError as e:
            content, extra, status = _error_body(str(e)), {"content-type": "application/json"}, e.status
            if batcher is not None:
                batcher.metrics.failed(e.reason)
        except Exception as e:  # a bug, or the model failed: answer 500, keep serving
            print(f"dnnspec serve: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            content = _error_body(f"internal server error: {type(e).__name__}")
            extra, status = {"content-type": "application/json"}, 500
            if batcher is not None:
                batcher.metrics.failed("BACKEND" if phase == "inference" else "OTHER")
        raw = [(b"content-length", str(len(content)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    async def _read_body(self, receive, headers: dict[bytes, bytes]) -> bytes:
        """The body, refused with 413 over the limit (before reading, when Content-Length says so)."""
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise InferenceError(f"request body of {declared.decode('latin-1')} bytes is over the limit of "
                                 f"{limit} bytes", 413)
        chunks, size = [], 0
        while True:  # the caller's deadline bounds this loop
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InferenceError("the client disconnected before sending the whole body", 400, "CANCELED")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise InferenceError(f"request body is over the limit of {limit} bytes", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        encoding = headers.get(b"content-encoding")
        return self._decompress(b"".join(chunks), None if encoding is None else encoding.decode("latin-1"), limit)

    @staticmethod
    def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
        """Undo gzip/deflate Content-Encoding (as tritonclient can send), without going over the limit."""
        if encoding in (None, "", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise InferenceError(f"unsupported Content-Encoding '{encoding}'; use gzip, deflate or none", 415)
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise InferenceError(f"body is not valid {encoding} data: {e}") from None
        if len(out) > limit:
            raise InferenceError(f"decompressed request body is over the limit of {limit} bytes", 413)
        return out

    def _encode(self, m: ServedModel, req: InferRequest, outputs: dict) -> tuple[bytes, dict[str, str]]:
        """The response bytes and headers. Binary-only answers without an ``id`` reuse the JSON head
        made for the last answer of the same outputs and shapes (it depends on nothing else)."""
        key = None
        if req.id is None and not req.top_k:
            selection = req.outputs
            if selection is None:
                if req.binary_output:
                    key = (m.name, m.version, None, tuple((k, v.shape, v.dtype.str) for k, v in outputs.items()))
            elif all(sel.binary and not sel.classification for sel in selection):
                key = (m.name, m.version, tuple(sel.name for sel in selection),
                       tuple((outputs[sel.name].shape, outputs[sel.name].dtype.str) for sel in selection))
        if key is not None:
            cached = self._heads.get(key)
            if cached is not None:
                head, names, extra = cached
                return b"".join([head, *(binary_chunk(outputs[n]) for n in names)]), extra
        self._check_answer_size(m, req, outputs)
        body, chunks = self._response_body(m, req, outputs)
        content, extra = encode_response(body, chunks)
        if key is not None and chunks and all(outputs[e["name"]].dtype != object for e in body["outputs"]):
            head = content[:int(extra["inference-header-content-length"])]
            self._heads.put(key, (head, [e["name"] for e in body["outputs"]], extra), len(head))
        return content, extra

    def _check_answer_size(self, m: ServedModel, req: InferRequest, outputs: dict) -> None:
        """400 before encoding an answer that could be over ``--max-answer-mb`` (see ``answer_bound``)."""
        bound = answer_bound(outputs, _selection(m, req), req.top_k, req.binary_output, m.scores_output,
                             m.label_bytes) + len(req.id or "") * 12
        limit = self.config.max_answer_bytes
        if bound > limit:
            raise InferenceError(f"the answer could take up to {bound:,} bytes, over the limit of {limit:,} bytes "
                                 f"(--max-answer-mb {self.config.max_answer_mb:g}); ask for fewer rows or outputs, "
                                 "or for binary data")

    def _response_body(self, m: ServedModel, req: InferRequest, outputs: dict) -> tuple[dict, list[bytes]]:
        """The JSON part of the response and the binary chunks that follow it."""
        chunks: list[bytes] = []
        entries = []
        for sel in _selection(m, req):
            arr = outputs[sel.name]
            if sel.classification:
                arr = classification(arr, sel.classification, m.class_names)
            entries.append(output_entry(sel.name, arr, sel.binary, chunks))
        if req.top_k:
            names, scores = top_k(outputs[m.scores_output], req.top_k, m.class_names)
            entries.append(output_entry(TOP_K_CLASSES, names, req.binary_output, chunks))
            entries.append(output_entry(TOP_K_SCORES, scores, req.binary_output, chunks))
        body = {"model_name": m.name, "model_version": m.version, "outputs": entries}
        if req.id is not None:
            body["id"] = req.id
        return body, chunks


class Deadlines:
    """Request tasks cancelled when they outlive ``limit_s``: one sweeping task for the whole server.

    ``asyncio.timeout`` arms and disarms a timer handle per request, which cost ~9 % of the
    event loop's CPU on the inference route (py-spy); here a request costs a dict insert
    and delete, and a sweep every ``min(limit_s / 4, 0.1)`` s cancels the late ones, so a
    deadline fires up to that much late. :meth:`expired` tells a cancelled request whether
    the cancellation was its deadline (and takes it back with ``Task.uncancel``).
    """

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._due: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    def add(self, task: asyncio.Task) -> None:
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + self.limit_s
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def discard(self, task: asyncio.Task) -> None:
        self._due.pop(task, None)

    def expired(self, task: asyncio.Task) -> bool:
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(self.limit_s / 4, 0.1)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            late = [t for t, due in self._due.items() if due <= now]
            for t in late:
                del self._due[t]
                self._expired.add(t)
                t.cancel()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None


def _selection(m: ServedModel, req: InferRequest) -> list[OutputRequest]:
    """The outputs an answer carries: those asked for, or all of the model's."""
    if req.outputs is not None:
        return req.outputs
    return [OutputRequest(name, req.binary_output) for name in m.output_names]


_INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
_INFER_HEADERS = frozenset({b"content-length", b"content-encoding", b"inference-header-content-length"})


def _error_body(message: str) -> bytes:
    return json_bytes({"error": message})


class InferFront:
    """The ASGI app uvicorn runs: ``POST /v2/models/{name}[/versions/{v}]/infer`` goes straight to
    :meth:`Server.infer_asgi`; everything else (other routes, lifespan) to the Starlette app."""

    def __init__(self, app: Starlette, server: Server):
        self.app = app
        self.server = server
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            m = _INFER_PATH.fullmatch(scope["path"])
            if m is not None:
                return await self.server.infer_asgi(m["name"], m["version"], scope, receive, send)
        await self.app(scope, receive, send)


def create_app(repository: Repository, config: ServeConfig) -> InferFront:
    """The ASGI app serving ``repository``; ``app.state.server`` holds models and batchers."""
    server = Server(repository, config)

    async def on_dnnspec_error(request: Request, exc: InferenceError) -> Response:
        return error_response(str(exc), exc.status)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(f"no such endpoint: {request.method} {request.url.path}", 404)
        return error_response(exc.detail or "error", exc.status_code)

    async def on_bug(request: Request, exc: Exception) -> Response:
        print(f"dnnspec serve: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return error_response(f"internal server error: {type(exc).__name__}", 500)

    app = Starlette(routes=server.routes(), lifespan=server.lifespan, exception_handlers={
        InferenceError: on_dnnspec_error, HTTPException: on_http_error, Exception: on_bug})
    app.state.server = server
    return InferFront(app, server)


def app_from_env() -> InferFront:
    """Factory for ``uvicorn --workers N``: each worker process loads its own sessions."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(load_repository(config.model_path, config.provider, config.threads), config)


def config_to_env(config: ServeConfig) -> None:
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))


def serve(config: ServeConfig) -> None:
    """Load the models, bind ``host:port`` and serve until SIGINT/SIGTERM (graceful)."""
    import uvicorn

    connections, open_files = fit_open_files(config.max_connections)
    lowered = connections < config.max_connections
    config = replace(config, max_connections=connections)
    repository = load_repository(config.model_path, config.provider, config.threads)
    sock = bind_socket(config.host, config.port)
    _announce(repository, config, sock.getsockname()[1], open_files if lowered else None)
    kwargs = uvicorn_options(config)
    if config.workers > 1:
        sock.close()  # uvicorn's supervisor binds again and shares the socket with its workers
        config_to_env(config)
        with worker_directory(), _quiet_stop():  # the workers' metrics, summed by whichever answers a scrape
            uvicorn.run("dnnspec.serve.app:app_from_env", factory=True, host=config.host, port=config.port,
                        workers=config.workers, **kwargs)
        return
    server = uvicorn.Server(uvicorn.Config(create_app(repository, config), **kwargs))
    with _quiet_stop():
        try:
            server.run(sockets=[sock])
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def uvicorn_options(config: ServeConfig) -> dict:
    """The uvicorn settings of ``dnnspec serve`` (the tests run their servers with these too)."""
    # proxy_headers off: nothing here reads the client address (no access log), and the
    # middleware it adds is one more coroutine layer per request.
    return dict(log_level="warning", access_log=False, timeout_graceful_shutdown=config.timeout_s + 5,
                server_header=False, proxy_headers=False, http=protocol_class(),
                timeout_keep_alive=config.keep_alive_s,
                # h11's own limit on a head (400) sits just above the guard's (431)
                h11_max_incomplete_event_size=int(config.max_header_kb * 1024) + 1024)


@contextlib.contextmanager
def _quiet_stop():
    """Exit status 0 after uvicorn's graceful shutdown on SIGINT or SIGTERM (it re-raises them)."""
    import signal
    import threading

    def stop(signum, frame):
        raise SystemExit(0)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def bind_socket(host: str, port: int):
    """A listening TCP socket on host:port; UsageError (not a traceback) when that fails."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _announce(repository: Repository, config: ServeConfig, port: int, open_files: int | None) -> None:
    """One line on stderr; ``open_files`` when the connection cap was lowered to fit that open-file limit."""
    names = ", ".join(f"{n} (v{','.join(repository.versions(n))})" for n in sorted(repository.models))
    batching = (f"dynamic batching up to {config.max_batch} rows / {config.batch_window_ms:g} ms"
                if config.batch_window_ms > 0 else "dynamic batching off")
    cap = f"at most {config.max_connections} connections"
    if open_files is not None:
        cap += f", lowered to fit the open-file limit of {open_files}"
    print(f"dnnspec serve: {names} on http://{config.host}:{port}/v2 ({batching}, {config.workers} worker(s), "
          f"{config.provider}, {cap})", file=sys.stderr, flush=True)
