"""Dynamic batching: concurrent requests for one model merged into one ``session.run``.

Each model has a queue and one worker task. The worker takes the oldest request,
then keeps gathering more for at most ``window_s`` seconds or until ``max_batch``
rows, concatenates the inputs along the batch axis, runs the session once in its own
thread (onnxruntime releases the GIL, so the event loop keeps accepting requests
meanwhile) and hands each request its slice of the outputs. While one batch runs,
the next one queues up, so under load batches form even with a short window.

A batch also closes early when no request has joined it for ``window_s / 8`` (the
*idle gap*): once every client that was going to send has sent, waiting out the rest
of the window only adds latency and, with clients that wait for their answer before
sending again, costs throughput directly (32 clients in lock-step on a 2 ms window
spent most of each cycle waiting). Requests arriving back to back keep the batch open
up to the full window.

And a batch closes as soon as it holds as many rows as the largest of the last 8
batches that ended on their own (idle gap, window, max_batch): under steady load the
batch size settles, and the last idle gap of every batch is saved too. Every 8th batch
is not cut short this way, so its natural size is measured again and the usual size
follows the load up as well as down.

A batch runs in the model's runner thread (onnxruntime releases the GIL, so the event
loop goes on reading requests meanwhile), except when its runs have lately taken less
than ``INLINE_BELOW_S`` (0.2 ms, a moving average): then the hand-off to the thread and
back costs more than the run, and it runs on the event loop itself. A model that gets
slower (bigger batches) moves back to the thread on its own.

A window of 0 turns batching off: each request runs alone in a thread pool.

Metrics (:mod:`.metrics`) are updated once per run: rows, requests, run time and the
requests' summed time in the queue (from :meth:`Batcher.submit` to their run's start,
which for unbatched requests is their wait for a pool thread).
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .metrics import ModelMetrics
from .models import ServedModel
from .protocol import InferenceError, finite_rows, require_finite


@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    queued_at: float  # time.perf_counter() at submit


class Batcher:
    """Runs inference for one model, merging concurrent requests when ``window_s > 0``."""

    #: A batch closes when no request has joined it for this fraction of the window.
    IDLE_FRACTION = 1 / 8
    #: Every this many batches one is not closed at the usual size (so that the size can grow).
    PROBE_EVERY = 8
    #: Batches whose session.run lately took less than this run on the event loop itself.
    INLINE_BELOW_S = 200e-6

    def __init__(self, model: ServedModel, max_batch: int, window_s: float, pool: ThreadPoolExecutor,
                 metrics: ModelMetrics | None = None):
        self.model = model
        self.metrics = metrics
        self.max_batch = max_batch
        self.window_s = window_s
        self.enabled = window_s > 0 and max_batch > 1 and model.batchable
        self._pool = pool
        self._runner = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{model.name}") if self.enabled else None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._natural: collections.deque[int] = collections.deque(maxlen=self.PROBE_EVERY)
        self._batches = 0
        self._run_s = float("inf")  # moving average of session.run seconds; unknown: use the thread
        self._last_run_s = 0.0  # the latest run's seconds (one batch runs at a time)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def infer(self, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Outputs for ``inputs`` (``rows`` rows), run alone or inside a merged batch."""
        return await self.submit(inputs, rows)

    def submit(self, inputs: dict[str, np.ndarray], rows: int) -> asyncio.Future:
        """Queue ``inputs`` (``rows`` rows); the future gets the outputs (or the error) of its rows.

        Called from the event loop. The server awaits the future itself (one coroutine
        layer less per request than :meth:`infer`); cancelling it drops the request.
        """
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return loop.run_in_executor(self._pool, self._run_alone, inputs, rows, time.perf_counter())
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._work())
        future = loop.create_future()
        self._pending.append(_Pending(inputs, rows, future, time.perf_counter()))
        self._wake.set()
        return future

    async def close(self) -> None:
        """Stop the worker (after the server has finished its requests) and its thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._runner is not None:
            self._runner.shutdown(wait=True)

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._gather()
            if batch:
                await self._run(batch)

    async def _gather(self) -> list[_Pending]:
        """Requests for one batch: wait up to the window (or an idle gap, or the usual size), stop at max_batch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        idle_gap = self.window_s * self.IDLE_FRACTION
        self._batches += 1
        probe = self._batches % self.PROBE_EVERY == 0 or not self._natural
        usual = self.max_batch if probe else max(self._natural)
        batch: list[_Pending] = []
        rows = 0
        while True:
            while self._pending and (not batch or rows + self._pending[0].rows <= self.max_batch):
                item = self._pending.popleft()
                if not item.future.done():  # skip requests that timed out while queued
                    batch.append(item)
                    rows += item.rows
            remaining = deadline - loop.time()
            if self._pending or rows >= self.max_batch or remaining <= 0:
                self._natural.append(rows)
                return batch  # full, or the next request does not fit, or time is up
            if rows >= usual:
                return batch  # as big as batches have lately grown on their own: stop waiting
            self._wake.clear()
            try:
                async with asyncio.timeout(min(remaining, idle_gap)):
                    await self._wake.wait()
            except TimeoutError:
                self._natural.append(rows)
                return batch  # no request joined for the idle gap (or the window is over)

    async def _run(self, batch: list[_Pending]) -> None:
        """One session.run for the whole batch; each request gets its rows back."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        merged = self._merge(batch)
        kept = self._drop_non_finite(batch, merged)
        if len(kept) != len(batch):  # rare: some request held NaN/infinity and got its error
            if not kept:
                return
            batch, merged = kept, self._merge(kept)
        try:
            if self._run_s < self.INLINE_BELOW_S:  # shorter than a hand-off to the runner thread and back
                outputs = self._timed_run(merged)
            else:
                outputs = await loop.run_in_executor(self._runner, self._timed_run, merged)
        except Exception as e:  # a model failure fails every request of the batch, not the worker
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        if self.metrics is not None:  # once per run: sum(started - queued_at) over the batch
            n = len(batch)
            self.metrics.ran(sum(p.rows for p in batch), n, self._last_run_s,
                             started * n - sum(p.queued_at for p in batch))
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({k: v[start:start + p.rows] for k, v in outputs.items()})
            start += p.rows

    def _timed_run(self, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """model.run (on the event loop or in the runner thread), keeping a moving average of its duration."""
        t0 = time.perf_counter()
        outputs = self.model.run(merged)
        self._last_run_s = time.perf_counter() - t0
        self._run_s = 0.8 * self._run_s + 0.2 * self._last_run_s
        return outputs

    def _run_alone(self, inputs: dict[str, np.ndarray], rows: int, queued_at: float) -> dict[str, np.ndarray]:
        """One unbatched request, in a pool thread: model.run, and its metrics."""
        t0 = time.perf_counter()
        outputs = self.model.run(inputs)
        if self.metrics is not None:
            self.metrics.ran(rows, 1, time.perf_counter() - t0, t0 - queued_at)
        return outputs

    @staticmethod
    def _merge(batch: list[_Pending]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return batch[0].inputs
        return {k: np.concatenate([p.inputs[k] for p in batch]) for k in batch[0].inputs}

    @staticmethod
    def _drop_non_finite(batch: list[_Pending], merged: dict[str, np.ndarray]) -> list[_Pending]:
        """The batch without requests holding NaN/infinity, which get their 400 error here.

        Batched requests skip the per-request check (protocol.parse_infer_request with
        ``check_finite=False``): one row-wise check of the merged inputs costs less than
        one per request, and only a batch with a bad row looks at single requests.
        """
        bad = None
        for arr in merged.values():
            ok = finite_rows(arr)
            if ok is not None and not ok.all():
                bad = ~ok if bad is None else bad | ~ok
        if bad is None:
            return batch
        keep, start = [], 0
        for p in batch:
            rows, start = bad[start:start + p.rows], start + p.rows
            if not rows.any():
                keep.append(p)
                continue
            try:
                for name, arr in p.inputs.items():
                    require_finite(arr, name)
            except InferenceError as e:
                if not p.future.done():
                    p.future.set_exception(e)
        return keep
