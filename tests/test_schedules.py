"""Learning-rate schedules against their formulas, hand-evaluated."""

from __future__ import annotations

import math

import pytest

from dnnspec.engine.schedules import Schedule, make_schedule
from dnnspec.ir import FrozenDict, Step
from dnnspec.schema import SCHEDULE


def sched(kind, lr=0.1, epochs=10, steps=4, **opts):
    values, _ = SCHEDULE[kind].bind([], opts)
    return make_schedule(Step(kind, FrozenDict(values)), lr, epochs, steps)


def test_constant():
    s = sched("constant")
    assert [s(e) for e in (0, 0.25, 3.5, 9.75)] == [0.1] * 4


def test_step_drops_every_n_epochs():
    s = sched("step", every=3, gamma=0.5)
    assert s(0.0) == 0.1
    assert s(2.75) == 0.1
    assert s(3.0) == pytest.approx(0.05)
    assert s(6.25) == pytest.approx(0.025)


def test_exponential_is_continuous_per_step():
    s = sched("exponential", gamma=0.9)
    assert s(0.0) == 0.1
    assert s(0.5) == pytest.approx(0.1 * math.sqrt(0.9))
    assert s(2.0) == pytest.approx(0.1 * 0.81)


def test_cosine_from_lr_to_min_lr():
    s = sched("cosine", lr=1.0, epochs=4, min_lr=0.2)
    assert s(0.0) == pytest.approx(1.0)
    assert s(2.0) == pytest.approx(0.6)  # half way: min + (max-min)/2
    assert s(1.0) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert s(4.0) == pytest.approx(0.2)


def test_linear_warmup_counts_the_current_step():
    s = sched("constant", lr=0.4, steps=4, warmup=2)  # 8 warm-up steps
    lrs = [s(i / 4) for i in range(10)]
    assert lrs[:8] == pytest.approx([0.4 * (k + 1) / 8 for k in range(8)])
    assert lrs[8:] == [0.4, 0.4]


def test_cosine_starts_after_warmup():
    s = sched("cosine", lr=1.0, epochs=5, steps=2, warmup=1, min_lr=0.0)
    assert s(0.0) == pytest.approx(0.5)  # warm-up step 1 of 2, cosine still at its start
    assert s(1.0) == pytest.approx(1.0)
    assert s(3.0) == pytest.approx(0.5)  # (3 - 1) / (5 - 1) = half way
    assert s(5.0) == pytest.approx(0.0, abs=1e-12)


def test_step_with_warmup_multiplies():
    s = Schedule("step", 1.0, epochs=10, steps_per_epoch=1, warmup=2, every=1, gamma=0.5)
    assert s(0) == pytest.approx(0.5 * 1.0)   # warm-up 1/2, gamma^0
    assert s(1) == pytest.approx(1.0 * 0.5)   # warm-up done, gamma^1
    assert s(3) == pytest.approx(0.125)
