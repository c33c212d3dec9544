"""Dynamic batching: concurrent requests for one model merged into one ``session.run``.

Each model has a queue and one worker task. The worker takes the oldest request,
then keeps gathering more for at most ``window_s`` seconds or until ``max_batch``
rows, concatenates the inputs along the batch axis, runs the session once in its own
thread (onnxruntime releases the GIL, so the event loop keeps accepting requests
meanwhile) and hands each request its slice of the outputs. While one batch runs,
the next one queues up, so under load batches form even with a short window.

A window of 0 turns batching off: each request runs alone in a thread pool.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .models import ServedModel


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future


class Batcher:
    """Runs inference for one model, merging concurrent requests when ``window_s > 0``."""

    def __init__(self, model: ServedModel, max_batch: int, window_s: float, pool: ThreadPoolExecutor):
        self.model = model
        self.max_batch = max_batch
        self.window_s = window_s
        self.enabled = window_s > 0 and max_batch > 1 and model.batchable
        self._pool = pool
        self._runner = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{model.name}") if self.enabled else None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def infer(self, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Outputs for ``inputs`` (``rows`` rows), run alone or inside a merged batch."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self._pool, self.model.run, inputs)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._work())
        item = _Pending(inputs, rows, loop.create_future())
        self._pending.append(item)
        self._wake.set()
        return await item.future

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
        """Requests for one batch: wait up to the window, stop at max_batch rows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
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
                return batch  # full, or the next request does not fit, or time is up
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _run(self, batch: list[_Pending]) -> None:
        """One session.run for the whole batch; each request gets its rows back."""
        loop = asyncio.get_running_loop()
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {k: np.concatenate([p.inputs[k] for p in batch]) for k in batch[0].inputs}
        try:
            outputs = await loop.run_in_executor(self._runner, self.model.run, merged)
        except Exception as e:  # a model failure fails every request of the batch, not the worker
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({k: v[start:start + p.rows] for k, v in outputs.items()})
            start += p.rows
