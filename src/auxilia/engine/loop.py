"""The training loop: the only one in auxilia.

Every step: set the learning rates, draw an index batch from every stream and build the views,
run the objective's step strategy (by default one forward per slot over the concatenated views,
the objective's terms, one backward, every optimizer), and, if the step was committed, update
the stateful terms and slots (banks, EMA teachers). Every ``eval_every`` steps: evaluate, select
on val, checkpoint (:mod:`auxilia.engine.selection`). A ``train.time`` run first derives its
number of steps from throw-away steps (:mod:`auxilia.engine.speed`), once: a resume keeps it.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence

from auxilia.engine import state as run_state
from auxilia.engine.context import LoopState, RunContext
from auxilia.engine.distributed import any_rank, mean_over_ranks, same_buffers
from auxilia.engine.runlog import ProgressBar, TrainMeter
from auxilia.engine.schedule import beyond_the_run
from auxilia.engine.selection import eval_every as evaluation_cadence
from auxilia.engine.selection import evaluate_and_save, evaluate_test_every_time, test_eval_note
from auxilia.engine.signals import Interrupted, StopFlag
from auxilia.engine.speed import fit_to_time
from auxilia.engine.stepper import NonFiniteLossError, StepOutcome, Stepper, set_learning_rates
from auxilia.parts import Progress

Callback = Callable[[int, dict[str, float]], None]

__all__ = ["Callback", "LoopState", "NonFiniteLossError", "run_loop", "train_step"]


def run_loop(run: RunContext, callbacks: Sequence[Callback], stop: StopFlag) -> None:
    """Train ``run`` from ``run.loop.step`` to the end (or to a stop request)."""
    cfg, loop = run.config, run.loop
    spe = run.steps_per_epoch
    eval_every = evaluation_cadence(run)
    test_always = _test_every_time(run, eval_every)
    run.set_modes()
    if stop.requested:  # a signal while the run was being built: nothing trained, nothing saved
        print(f"{stop.name} received before the first step; nothing was trained", flush=True)
        raise Interrupted(stop.signum or signal.SIGINT)
    clock = _WallClock(loop.wall_seconds)
    stepper = Stepper(run)
    ranks = stepper.ranks
    if cfg.train.time is not None and loop.derived_steps is None:  # a resume never re-measures
        _fit_to_time(run, stepper, eval_every, clock.start, test_always)
    total = run.total_steps
    bar = run.io.bar = ProgressBar(total, loop.step, cfg.run.progress if run.io.writes else "off")
    if not test_always and len(run.setup.data.test):
        bar.message(test_eval_note(cfg.train.test_eval, len(run.setup.data.test)))
    meter = TrainMeter()
    t_start = time.perf_counter()
    try:
        while loop.step < total:
            result, batch = train_step(run, stepper)
            if result.committed:
                meter.add(result.losses, result.outputs, batch)
            if callbacks:  # a host read of every loss: only when someone listens
                values = {k: float(v.detach()) for k, v in result.losses.items()}
                for cb in callbacks:
                    cb(loop.step, values)
            if loop.step % spe == 0:
                run.objective.on_epoch_end(loop.step // spe - 1)
            if loop.step % cfg.train.log_every == 0 or loop.step == total:
                stepper.check()  # a non-finite step never reaches the log
                _log_train(run, meter)
            if loop.step % eval_every == 0 or loop.step == total:
                stepper.check()
                loop.train_seconds += time.perf_counter() - t_start
                loop.wall_seconds = clock.now()
                same_buffers(run.models, ranks)  # every rank evaluates and selects rank 0's model
                evaluate_and_save(run, test_now=test_always or loop.step == total)
                t_start = time.perf_counter()
            if any_rank(stop.requested, run.setup.device, ranks):  # all ranks stop at one step
                loop.train_seconds += time.perf_counter() - t_start
                loop.wall_seconds = clock.now()
                stepper.check()
                _stop(run, stop)
    finally:
        run.batches.close()  # the input workers, whatever ended the loop
    loop.wall_seconds = clock.now()
    bar.close()


def train_step(run: RunContext, stepper: Stepper) -> tuple[StepOutcome, dict]:
    """One optimizer step at ``run.loop.step``: learning rates, batch, the step (the
    stepper: the objective's step strategy, the state of what stepped); the loop's, and the
    throw-away steps a ``train.time`` run is timed on. Returns the outcome and its batch."""
    loop = run.loop
    progress = Progress(loop.step, run.total_steps, run.steps_per_epoch)  # the training clock
    set_learning_rates(run, loop.step)
    batch = run.batches.next(loop.step)
    outcome = stepper.step(batch, progress)
    loop.step += 1
    loop.images += run.batches.images(batch)
    return outcome, batch


class _WallClock:
    """The loop's wall time: what earlier sessions of the run recorded, plus this one's."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.perf_counter()

    def now(self) -> float:
        return self.before + time.perf_counter() - self.start


def _fit_to_time(run: RunContext, stepper: Stepper, eval_every: int, started: float,
                 test_always: bool) -> None:
    """Derive the total of a ``train.time`` run (:mod:`auxilia.engine.speed`) and say so."""
    cfg, spe = run.config, run.steps_per_epoch
    loud = cfg.run.progress != "off"
    if loud:
        print(f"train.time={cfg.train.time}: timing the first steps (thrown away) and an "
              "evaluation", flush=True)
    budget = fit_to_time(run, lambda: train_step(run, stepper), eval_every=eval_every,
                         started=started, test_every_time=test_always)
    notes = dict.fromkeys(n for opt in run.optimizers.values()
                          for n in beyond_the_run(opt.schedule, budget.steps, spe))
    if loud:
        print(budget.line(spe), flush=True)
    for note in notes:  # a schedule written for a longer run: said even in a quiet run
        print(f"note: {note}", file=None if loud else sys.stderr, flush=True)


def _test_every_time(run: RunContext, eval_every: int) -> bool:
    cfg, data = run.config, run.setup.data
    return evaluate_test_every_time(cfg.train.test_eval, len(data.val), len(data.test),
                                    eval_every * run.labeled.batch_size)


def _log_train(run: RunContext, meter: TrainMeter) -> None:
    lr = next(iter(run.optimizers.values())).torch.param_groups[0]["lr"]
    record = mean_over_ranks(meter.record(run.loop.step, lr), run.batches.ranks,
                             run.setup.device)
    run.io.log.write(record)
    run.io.bar.update(run.loop.step, TrainMeter.line(record))


def _stop(run: RunContext, stop: StopFlag) -> None:
    """A stop request (Ctrl-C, SIGTERM; on any rank): write ``last.pt`` (rank 0) and raise
    :class:`Interrupted`."""
    same_buffers(run.models, run.batches.ranks)
    folder = run.io.folder
    assert folder is not None, "a run is stopped only once it has its folder"
    run_state.save(folder.last, run)
    if run.io.writes:
        folder.drop_replaced()
    run.io.bar.close()
    if not run.io.writes:
        raise Interrupted(stop.signum or signal.SIGTERM)
    why = stop.name if stop.requested else "a stop on another rank"
    print(f"{why} received: stopped at step {run.loop.step}; checkpoint written to "
          f"{folder.last}. Resume with: auxilia train --resume {folder.path}", flush=True)
    raise Interrupted(stop.signum or signal.SIGINT)
