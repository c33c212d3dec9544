"""Learning-rate schedules: the learning rate as a function of the fractional epoch.

The trainer asks for the rate before each step at ``epoch = e + i / steps_per_epoch``
(epoch ``e`` counted from 0, step ``i`` of that epoch). With ``lr`` the optimizer's rate::

    constant      lr
    step          lr * gamma ** floor(epoch / every)
    exponential   lr * gamma ** epoch                        (continuous, per step)
    cosine        min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,
                  p = (epoch - warmup) / (epochs - warmup)   (0 -> 1 over the epochs after warm-up)

Linear warm-up (``warmup`` epochs, any schedule) multiplies the rate by
``min(1, (epoch + 1/steps_per_epoch) / warmup)``: it counts the current step as done, so the
first step is not wasted at rate 0 and the last warm-up step reaches the full rate.
Step and exponential decay count epochs from the start of training, warm-up included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Step


@dataclass(frozen=True)
class Schedule:
    """lr(epoch) for one ``schedule`` statement. ``epochs``: the run's length (for cosine)."""

    kind: str
    lr: float
    epochs: int = 1
    steps_per_epoch: int = 1
    warmup: float = 0.0
    every: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0

    def __call__(self, epoch: float) -> float:
        """The learning rate for the step that starts at fractional epoch ``epoch`` (>= 0)."""
        return self.decayed(epoch) * self.warmup_factor(epoch)

    def warmup_factor(self, epoch: float) -> float:
        if self.warmup <= 0.0:
            return 1.0
        return min(1.0, (epoch + 1.0 / self.steps_per_epoch) / self.warmup)

    def decayed(self, epoch: float) -> float:
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":
            return self.lr * self.gamma ** math.floor(epoch / self.every)
        if self.kind == "exponential":
            return self.lr * self.gamma ** epoch
        if self.kind == "cosine":
            span = self.epochs - self.warmup
            p = 0.0 if span <= 0 else min(1.0, max(0.0, (epoch - self.warmup) / span))
            return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * p)) / 2.0
        raise ValueError(f"unknown schedule {self.kind!r}")


def make_schedule(step: Step, lr: float, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule an IR ``schedule`` statement describes, around base rate ``lr``."""
    opts = dict(step.options)
    known = {k: opts[k] for k in ("warmup", "every", "gamma", "min_lr") if k in opts}
    return Schedule(step.kind, float(lr), int(epochs), max(1, int(steps_per_epoch)), **known)


__all__ = ["Schedule", "make_schedule"]
