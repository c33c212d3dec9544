"""The dynamic batcher on its own: merging, the idle gap, and the usual batch size it learns."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")

from dnnspec.serve.batching import Batcher  # noqa: E402
from dnnspec.serve.protocol import InferenceError  # noqa: E402


class FakeModel:
    """Doubles its input; records the rows of every run."""

    name = "fake"
    batchable = True

    def __init__(self):
        self.runs: list[int] = []

    def run(self, inputs):
        self.runs.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


@pytest.fixture()
def loop():
    """One event loop per test: a Batcher binds its worker task to the loop of its first request."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def burst(loop, batcher: Batcher, size: int, start: int) -> tuple[float, list]:
    """``size`` one-row requests at once; (seconds until all are answered, their outputs)."""

    async def go():
        t0 = time.monotonic()
        outs = await asyncio.gather(*(batcher.infer({"x": np.full((1, 2), start + i, np.float32)}, 1)
                                      for i in range(size)))
        return time.monotonic() - t0, outs

    return loop.run_until_complete(go())


def test_batches_close_at_the_usual_size_and_probe_every_eighth(loop):
    """Window 4 s (idle gap 0.5 s): the first burst waits out the gap, later bursts of the same
    size close as soon as they are complete, and every 8th batch waits again (a probe)."""
    model = FakeModel()
    with ThreadPoolExecutor(2) as pool:
        b = Batcher(model, max_batch=64, window_s=4.0, pool=pool)
        times = []
        for k in range(9):
            seconds, outs = burst(loop, b, 5, 10 * k)
            times.append(seconds)
            assert [o["y"][0, 0] for o in outs] == [2.0 * (10 * k + i) for i in range(5)]
        loop.run_until_complete(b.close())
    assert model.runs == [5] * 9
    slow = [i for i, t in enumerate(times) if t >= 0.45]
    assert slow == [0, 7], times  # batch 1: no history yet; batch 8: the probe
    assert all(t < 0.3 for i, t in enumerate(times) if i not in slow), times


def test_the_usual_size_only_stops_waiting_and_never_splits_queued_requests(loop):
    """After batches of 3, a burst of 6 already queued runs as one batch of 6, without waiting."""
    model = FakeModel()
    with ThreadPoolExecutor(2) as pool:
        b = Batcher(model, max_batch=64, window_s=4.0, pool=pool)
        burst(loop, b, 3, 0)                           # no history: waits out the idle gap, natural size 3
        seconds, outs = burst(loop, b, 6, 100)
        loop.run_until_complete(b.close())
    assert model.runs == [3, 6] and seconds < 0.3, (model.runs, seconds)
    assert [o["y"][0, 0] for o in outs] == [2.0 * (100 + i) for i in range(6)]


def test_a_model_failure_fails_the_batch_not_the_batcher(loop):
    class Failing(FakeModel):
        def run(self, inputs):
            if inputs["x"][0, 0] < 0:
                raise RuntimeError("boom")
            return super().run(inputs)

    model = Failing()
    with ThreadPoolExecutor(2) as pool:
        b = Batcher(model, max_batch=64, window_s=0.05, pool=pool)

        async def go():
            bad = await asyncio.gather(b.infer({"x": -np.ones((1, 2), np.float32)}, 1), return_exceptions=True)
            good = await b.infer({"x": np.ones((1, 2), np.float32)}, 1)
            return bad, good

        bad, good = loop.run_until_complete(go())
        loop.run_until_complete(b.close())
    assert isinstance(bad[0], RuntimeError) and good["y"][0, 0] == 2.0


def test_nan_rows_are_refused_per_request(loop):
    model = FakeModel()
    with ThreadPoolExecutor(2) as pool:
        b = Batcher(model, max_batch=64, window_s=0.2, pool=pool)
        xs = [np.full((2, 2), i, np.float32) for i in range(3)]
        xs[1][1, 0] = np.nan

        async def go():
            return await asyncio.gather(*(b.infer({"x": x}, 2) for x in xs), return_exceptions=True)

        outs = loop.run_until_complete(go())
        loop.run_until_complete(b.close())
    assert isinstance(outs[1], InferenceError) and "contains NaN" in str(outs[1])
    assert outs[0]["y"].tolist() == [[0, 0], [0, 0]] and outs[2]["y"].tolist() == [[4, 4], [4, 4]]
    assert model.runs == [4]
