"""``train:`` of a config: the run's length (epochs, steps or a time budget), evaluation
cadence and numerics."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from auxilia.durations import canonical_duration, parse_duration
from auxilia.strict import Strict

__all__ = ["TrainConfig", "epochs_to_steps"]


class TrainConfig(Strict):
    """Training length, evaluation cadence and numerics.

    The length is ``epochs``, ``steps`` (which replaces ``epochs``) or ``time``, a wall-clock
    budget (``15m``, ``90s``, ``1h30m``, ``2.5m``, seconds as a number) from which the run
    derives its number of steps by timing its first steps and one evaluation
    (:mod:`auxilia.engine.speed`); ``time`` replaces ``epochs`` (which is then ignored) and
    refuses ``steps``, a second length.

    ``eval_every`` is a number of steps (``100``, ``"100 steps"``) or of epochs
    (``"2 epochs"``, ``"0.5 epoch"``, ``"2ep"``); the default is once per epoch, spaced
    further when an epoch is too short to pay for an evaluation
    (:func:`auxilia.engine.selection.eval_every`).
    ``test_eval`` says when the test split is evaluated: ``every`` evaluation, only when the
    validation evaluation ``selected`` a new best checkpoint (and at the last step), or
    ``auto``: ``selected`` when evaluating test every time would cost more than about 10 % of
    the training between evaluations (:func:`auxilia.engine.loop.evaluate_test_every_time`).
    """

    epochs: float | None = Field(default=30, gt=0)
    steps: int | None = Field(default=None, gt=0, description="overrides epochs when set")
    time: str | None = Field(default=None, description="a wall-clock budget (15m, 90s, 1h30m): "
                             "the steps are derived from the run's measured speed")
    eval_every: int | str | None = Field(
        default=None, description="steps (100) or epochs ('2 epochs'); default once per epoch, "
        "spaced further when an epoch is too short to pay for an evaluation")
    test_eval: Literal["every", "selected", "auto"] = "auto"
    log_every: int = Field(default=20, gt=0)
    amp: bool = Field(default=False, description="bf16 autocast (fp16 + grad scaling on CUDA)")
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    deterministic: bool = True
    on_nonfinite: Literal["stop", "skip"] = "stop"
    keep_last_evals: int = Field(default=5, ge=1, description="k for the median-of-last-k report")

    @field_validator("eval_every", mode="before")
    @classmethod
    def _eval_every(cls, value: Any) -> int | str | None:
        """Steps become an int, epochs the canonical ``"<x> epochs"``; anything else is refused.

        Canonical values keep ``config.yaml`` and the resume check independent of spelling.
        """
        if value is None:
            return None
        parsed = _parse_eval_every(value)
        if parsed is None:
            raise ValueError(f"expected a number of steps (100, '100 steps') or of epochs "
                             f"('2 epochs', '0.5 epoch', '2ep'), greater than 0; got {value!r}")
        return parsed

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> str | None:
        """A duration in its canonical spelling (``90s`` → ``1m30s``), so that
        ``config.yaml``, the resume check and a sweep's record do not depend on spelling."""
        return None if value is None else canonical_duration(value)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        """``time`` replaces ``epochs`` (as ``steps`` does: ``epochs`` always has a value);
        with ``steps`` it is refused: two lengths, and no way to tell which one was meant."""
        if self.time is not None and self.steps is not None:
            raise ValueError(f"train.time={self.time} and train.steps={self.steps} both set "
                             "the run's length; give one (train.steps=null keeps the time)")
        return self

    @property
    def time_seconds(self) -> float | None:
        """``time`` in seconds, or None without a time budget."""
        return None if self.time is None else parse_duration(self.time)

    def total_steps(self, steps_per_epoch: int, derived: int | None = None) -> int:
        """The run's number of optimizer steps: ``steps``, ``epochs`` of ``steps_per_epoch``
        (rounded up), or with ``time`` the ``derived`` count the run measured and recorded.

        Raises:
            ValueError: ``time`` is set and no count was derived yet.
        """
        if self.time is not None:
            if derived is None:
                raise ValueError(f"train.time={self.time}: the number of steps is derived "
                                 "when training starts, and none was derived yet")
            return derived
        return self.steps or max(1, epochs_to_steps(float(self.epochs or 1), steps_per_epoch))

    def eval_every_steps(self, steps_per_epoch: int) -> int:
        """``eval_every`` in optimizer steps (at least 1); epochs as :func:`epochs_to_steps`."""
        if self.eval_every is None:
            return steps_per_epoch
        if isinstance(self.eval_every, int):
            return self.eval_every
        epochs = float(self.eval_every.split()[0])
        return max(1, epochs_to_steps(epochs, steps_per_epoch))


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """The first whole optimizer step at which ``epochs`` epochs have been trained:
    ``ceil(epochs · steps_per_epoch)``, the one conversion of a length in epochs (the run's
    length, ``eval_every``, a schedule's milestones and warm-up) into steps.

    Rounded up, not to the nearest: a run of ``epochs: 2.5`` trains at least 2.5 epochs and a
    milestone at epoch ``m`` applies once ``m`` epochs were trained, never before. Python's
    ``round`` rounds halves to even, so "the nearest step" fell before the epoch for some
    epoch sizes and after it for others (0.5 epoch of 5 steps: step 2; of 7 steps: step 4).
    The product is first rounded to 9 decimals so that binary noise does not add a step
    (``0.1 * 30`` is ``3.0000000000000004``: 3 steps, not 4).

    Args:
        epochs: a length in epochs (``>= 0``; fractions allowed).
        steps_per_epoch: optimizer steps in one epoch (full batches of the labeled split).

    Returns:
        The number of steps, 0 for 0 epochs.
    """
    return math.ceil(round(epochs * steps_per_epoch, 9))


_EPOCH_SUFFIXES, _STEP_SUFFIXES = ("epochs", "epoch", "ep"), ("steps", "step", "")


def _parse_eval_every(value: Any) -> int | str | None:
    """``train.eval_every`` as an int of steps or ``"<x> epochs"``; None when malformed."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None  # a bool is an int to Python; a bare float could mean steps or epochs
    if isinstance(value, int):
        return value if value > 0 else None
    text = value.strip().lower()
    for suffix in _STEP_SUFFIXES:  # first: "step" ends like "2ep"
        number = text.removesuffix(suffix).strip()
        if text.endswith(suffix) and number.isascii() and number.isdigit():
            return int(number) if int(number) > 0 else None
    for suffix in _EPOCH_SUFFIXES:
        if text.endswith(suffix):
            try:
                epochs = float(text.removesuffix(suffix).strip())
            except ValueError:
                return None
            if not 0 < epochs < float("inf"):
                return None
            return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")
    return None
