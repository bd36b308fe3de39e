"""Measure a run's speed on throw-away steps, for a ``train.time`` budget.

:func:`fit_to_time` keeps the run's whole state in memory (what a checkpoint holds), trains a
warm-up step (one-time costs: allocation, kernel selection, compilation) and then up to
:data:`MAX_MEASURED_STEPS` real steps, times an evaluation on a sample of val, times a
checkpoint write, and puts the state back exactly (the resume path: RNGs, streams, optimizers,
banks, counters). The run then starts from step 0 as if nothing had happened, with its total
fixed by :meth:`auxilia.engine.timebudget.TimeBudget.decide`: a ``train.time`` run that derived
N steps trains exactly as ``train.steps=N`` would.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import torch

from auxilia.atomic_files import atomic_write
from auxilia.engine import state as run_state
from auxilia.engine.context import RunContext
from auxilia.engine.selection import evaluated_models, evaluation_images
from auxilia.engine.timebudget import TimeBudget

__all__ = ["MAX_MEASURED_STEPS", "fit_to_time"]

MAX_MEASURED_STEPS = 20
"""Timed steps at most (after the warm-up step); fewer once they took :data:`MEASURE_SHARE`
of the budget, but never fewer than :data:`MIN_MEASURED_STEPS`."""
MIN_MEASURED_STEPS = 5
MEASURE_SHARE = 0.02
BEST_SHARE = 0.5
"""Share of evaluations counted as writing ``best.pt`` too (every one early in a run, few late)."""
EVAL_SAMPLE_BATCHES = 4
"""Evaluation batches timed: evaluation costs the same per image, so a sample of val is
timed and scaled to every split an evaluation reads."""


def fit_to_time(run: RunContext, train_step: Callable[[], object], *, eval_every: int,
                started: float, test_every_time: bool = True) -> TimeBudget:
    """Measure on throw-away steps, restore the run, and fix its total.

    Args:
        run: the run, at step 0; it is left exactly as it was.
        train_step: one optimizer step of the loop at ``run.loop.step``.
        eval_every: steps between evaluations.
        started: ``time.perf_counter()`` when the loop started (the budget's start).
        test_every_time: whether every evaluation evaluates test (``train.test_eval``
            resolved); otherwise test is counted in every other evaluation.

    Raises:
        TimeBudgetError: not one step fits in the budget.
    """
    cfg, loop, device = run.config.train, run.loop, run.setup.device
    budget_s = float(cfg.time_seconds or 0.0)
    saved, save_s = _snapshot(run)
    loop.derived_steps = 1  # step 0's learning rate does not depend on the total
    first = time.perf_counter()
    train_step()
    _sync(device)
    # the measured steps' learning rates follow a total guessed from the warm-up step
    loop.derived_steps = max(1, math.floor(budget_s / (time.perf_counter() - first)))
    step_s, measured = _time_steps(train_step, device, MEASURE_SHARE * budget_s)
    # last.pt at every evaluation, best.pt where val selects a new best: about every other one
    eval_s = _evaluation_seconds(run, test_every_time) + (1 + BEST_SHARE) * save_s
    run_state.restore(torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True), run)
    spent_s = time.perf_counter() - started
    budget = TimeBudget.decide(cfg.time or "", budget_s, step_s=step_s, eval_s=eval_s,
                               spent_s=spent_s, measured_steps=measured, eval_every=eval_every,
                               steps_per_epoch=run.steps_per_epoch)
    loop.derived_steps, loop.time_budget = budget.steps, budget.to_dict()
    return budget


def _snapshot(run: RunContext) -> tuple[bytes, float]:
    """The run's state as checkpoint bytes, and the seconds a checkpoint write takes
    (serialising, then writing and syncing a scratch file beside the checkpoints)."""
    t0 = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(run_state.checkpoint_state(run), buffer)
    data = buffer.getvalue()
    folder = run.io.folder
    assert folder is not None, "a train.time run is timed in its folder"
    scratch = folder.last.parent / ".speed.tmp"  # a temporary: a crash's is cleaned up
    try:
        atomic_write(scratch, lambda f: f.write(data))
    finally:
        scratch.unlink(missing_ok=True)
    return data, time.perf_counter() - t0


def _time_steps(train_step: Callable[[], object], device: torch.device, share_s: float
                ) -> tuple[float, int]:
    """Mean seconds per step over :data:`MIN_MEASURED_STEPS` to :data:`MAX_MEASURED_STEPS`
    steps, stopping early once they took ``share_s``."""
    t0, n = time.perf_counter(), 0
    while n < MAX_MEASURED_STEPS and (n < MIN_MEASURED_STEPS
                                      or time.perf_counter() - t0 < share_s):
        train_step()
        n += 1
        if n >= MIN_MEASURED_STEPS:
            _sync(device)  # the clock reads work done, not work queued
    return (time.perf_counter() - t0) / n, n


def _evaluation_seconds(run: RunContext, test_every_time: bool) -> float:
    """Seconds of an evaluation (val, test, the unlabeled monitor; checkpoints excluded):
    a sample of val (or test) timed on every evaluated model, scaled to those splits."""
    data, batch = run.setup.data, run.config.data.eval_batch_size
    split = data.val if len(data.val) else data.test
    n = min(len(split), EVAL_SAMPLE_BATCHES * batch)
    if n == 0:
        return 0.0
    models = evaluated_models(run)
    sample = split.take(torch.arange(n))
    t0 = time.perf_counter()
    for model in models.values():
        run.setup.evaluator.metrics(model, sample)
    _sync(run.setup.device)
    per_image = (time.perf_counter() - t0) / n  # all evaluated models, one image
    # test where it is evaluated: every time, or (train.test_eval selected) where val selects
    # a new best, counted as every other evaluation like best.pt's write (all of them early in
    # a run, few late); counting it every time made every measured run end 10-15 % early
    images = evaluation_images(run, 1.0 if test_every_time else BEST_SHARE)
    run.set_modes()  # evaluation put the models in eval mode
    return per_image * images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
