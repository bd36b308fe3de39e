"""A wall-clock budget (``train.time``) turned into a number of steps: the arithmetic alone.

A run with ``train.time`` times a few throw-away steps and one evaluation
(:mod:`auxilia.engine.speed`), then fixes its number of steps with :func:`steps_for_time`.
From then on the total is an ordinary number: the learning rate and every ramp are pure
functions of ``(step, total)``, and the total is checkpointed, so a resumed run continues with
the same one and never measures again.

The budget covers the training loop: the measuring itself, every step, every evaluation (val,
test) and its checkpoints. Reading the data and building the models come
before it; the summary (FLOPs, plots) after it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from auxilia.durations import format_duration

__all__ = ["TimeBudget", "TimeBudgetError", "evaluations", "seconds_for_steps",
           "steps_for_time"]


class TimeBudgetError(ValueError):
    """The budget leaves no time for a single step; the message names ``train.time``."""


def evaluations(steps: int, eval_every: int) -> int:
    """How many evaluations a run of ``steps`` makes: every ``eval_every`` steps, and at the
    last step when it is not a multiple."""
    return math.ceil(steps / eval_every) if steps > 0 else 0


def seconds_for_steps(steps: int, *, step_s: float, eval_s: float, eval_every: int,
                      spent_s: float = 0.0) -> float:
    """The wall time a run of ``steps`` steps is expected to take:
    ``spent_s + steps·step_s + evaluations(steps)·eval_s``."""
    return spent_s + steps * step_s + evaluations(steps, eval_every) * eval_s


def steps_for_time(budget_s: float, *, step_s: float, eval_s: float, eval_every: int,
                   spent_s: float = 0.0) -> int:
    """The most steps whose :func:`seconds_for_steps` fits in ``budget_s`` (0 when not one).

    Args:
        budget_s: the whole budget, in seconds.
        step_s: seconds per training step.
        eval_s: seconds per evaluation (with its checkpoint).
        eval_every: steps between evaluations.
        spent_s: seconds already spent (measuring).
    """
    if step_s <= 0 or eval_every < 1:
        raise ValueError(f"step_s must be > 0 and eval_every >= 1; got {step_s}, {eval_every}")

    def fits(n: int) -> bool:
        return seconds_for_steps(n, step_s=step_s, eval_s=eval_s, eval_every=eval_every,
                                 spent_s=spent_s) <= budget_s

    low, high = 0, max(0, math.floor((budget_s - spent_s) / step_s))  # fits(high + 1) is False
    while low < high:  # cost grows with n: bisect for the last n that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low  # only ever set to an n that fits


@dataclass(frozen=True)
class TimeBudget:
    """What a ``train.time`` run measured and decided; checkpointed and written to the
    summary (``time_budget``), so a comparison can show it and a resume reuses it.

    Attributes:
        time: the budget as configured (canonical spelling, e.g. ``15m``).
        budget_s: the budget in seconds.
        step_s: mean seconds per training step, over ``measured_steps`` steps after a
            warm-up step (one-time costs excluded).
        eval_s: seconds per evaluation (val, test, checkpoints).
        spent_s: seconds the measuring took (throw-away steps, evaluation, restore).
        measured_steps: the steps ``step_s`` is the mean of.
        eval_every: steps between evaluations.
        steps: the derived number of steps: the run's total from then on.
        planned_s: the wall time the derived total is expected to take (≤ ``budget_s``).
    """

    time: str
    budget_s: float
    step_s: float
    eval_s: float
    spent_s: float
    measured_steps: int
    eval_every: int
    steps: int
    planned_s: float

    @classmethod
    def decide(cls, time: str, budget_s: float, *, step_s: float, eval_s: float,
               spent_s: float, measured_steps: int, eval_every: int,
               steps_per_epoch: int) -> TimeBudget:
        """Fix the total from the measured costs.

        Raises:
            TimeBudgetError: not one step fits; the message gives the time one epoch needs.
        """
        costs = {"step_s": step_s, "eval_s": eval_s, "eval_every": eval_every,
                 "spent_s": spent_s}
        steps = steps_for_time(budget_s, **costs)
        if steps == 0:
            epoch = seconds_for_steps(steps_per_epoch, **costs)
            raise TimeBudgetError(
                f"train.time={time} leaves no time to train: measuring took {spent_s:.1f} s, "
                f"one step takes {step_s:.3g} s and one evaluation {eval_s:.3g} s; one "
                f"epoch ({steps_per_epoch} steps) needs about "
                f"train.time={format_duration(math.ceil(epoch))}")
        return cls(time, budget_s, step_s, eval_s, spent_s, measured_steps, eval_every,
                   steps, seconds_for_steps(steps, **costs))

    def to_dict(self) -> dict[str, Any]:
        """Numbers rounded for reading (the checkpoint and ``summary.json``)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self, steps_per_epoch: int) -> str:
        """What was measured and decided, for the run's log."""
        return (f"train.time={self.time}: {self.step_s:.3g} s per step, {self.eval_s:.3g} s "
                f"per evaluation (measured on {self.measured_steps} steps, "
                f"{self.spent_s:.1f} s) -> {self.steps:,} steps "
                f"({self.steps / steps_per_epoch:.1f} epochs), evaluations every "
                f"{self.eval_every:,} steps, about {format_duration(round(self.planned_s))}")
