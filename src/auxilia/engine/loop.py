"""The training loop: the only one in auxilia.

Every step: set the learning rates, draw an index batch from every stream and build the views,
run the objective's step strategy (by default one forward per slot over the concatenated views,
the objective's terms, one backward, every optimizer), and, if the step was committed, update
the stateful terms and slots (banks, EMA teachers). Every ``eval_every`` steps: evaluate, select
on val, checkpoint (:mod:`auxilia.engine.selection`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence

from auxilia.engine import state as run_state
from auxilia.engine.batch import make_batch
from auxilia.engine.context import LoopState, RunContext
from auxilia.engine.runlog import ProgressBar, TrainMeter
from auxilia.engine.selection import evaluate_and_save, evaluate_test_every_time, test_eval_note
from auxilia.engine.signals import Interrupted, StopFlag
from auxilia.engine.step import BufferSnapshot, NonFiniteLossError, set_learning_rates
from auxilia.parts import StepResult
from auxilia.terms import Progress

Callback = Callable[[int, dict[str, float]], None]

__all__ = ["Callback", "LoopState", "NonFiniteLossError", "run_loop"]


def run_loop(run: RunContext, callbacks: Sequence[Callback], stop: StopFlag) -> None:
    """Train ``run`` from ``run.loop.step`` to the end (or to a stop request)."""
    cfg, loop = run.config, run.loop
    total, spe = run.total_steps, run.steps_per_epoch
    eval_every = cfg.train.eval_every_steps(spe)
    run.bar = ProgressBar(total, loop.step, cfg.run.progress)
    test_always = _test_every_time(run, eval_every)
    meter = TrainMeter()
    run.set_modes()
    if stop.requested:  # a signal while the run was being built: nothing trained, nothing saved
        run.bar.close()
        print(f"{stop.name} received before the first step; nothing was trained", flush=True)
        raise Interrupted(stop.signum or signal.SIGINT)
    t_start = time.perf_counter()
    while loop.step < total:
        progress = Progress(loop.step, total, spe)
        set_learning_rates(run, loop.step)
        batch = make_batch(run.setup, {n: next(s) for n, s in run.streams.items()}, loop.step)
        skipped, buffers = loop.skipped_steps, BufferSnapshot(run)
        result = run.objective.step(run, batch, progress)
        if loop.skipped_steps > skipped:  # a non-finite step skipped: it leaves no trace
            buffers.restore()
        if result.committed:
            _commit(run, result, batch, progress)
            meter.add(result.losses, result.outputs, batch)
        loop.step += 1
        loop.images += sum(int(batch[f"idx_{spec.keys}"].shape[0])  # every stream's samples
                           for spec in run.objective.streams.values())
        for cb in callbacks:
            cb(loop.step, {k: float(v.detach()) for k, v in result.losses.items()})
        if loop.step % spe == 0:
            run.objective.on_epoch_end(loop.step // spe - 1)
        if loop.step % cfg.train.log_every == 0 or loop.step == total:
            _log_train(run, meter)
        if loop.step % eval_every == 0 or loop.step == total:
            loop.train_seconds += time.perf_counter() - t_start
            evaluate_and_save(run, test_now=test_always or loop.step == total)
            t_start = time.perf_counter()
        if stop.requested:
            loop.train_seconds += time.perf_counter() - t_start
            _stop(run, stop)
    run.bar.close()


def _commit(run: RunContext, result: StepResult, batch: dict, progress: Progress) -> None:
    """A committed step updates state: the terms' banks, then the slots (EMA teachers)."""
    run.objective.after_step(result.outputs, batch, progress)
    for name, slot in run.slots.items():
        slot.after_step(name, run.models, progress)


def _test_every_time(run: RunContext, eval_every: int) -> bool:
    cfg, data = run.config, run.setup.data
    always = evaluate_test_every_time(cfg.train.test_eval, len(data.val), len(data.test),
                                      eval_every * run.labeled.batch_size)
    if not always and len(data.test):
        run.bar.message(test_eval_note(cfg.train.test_eval, len(data.test)))
    return always


def _log_train(run: RunContext, meter: TrainMeter) -> None:
    lr = next(iter(run.optimizers.values())).torch.param_groups[0]["lr"]
    record = meter.record(run.loop.step, lr)
    run.log.write(record)
    run.bar.update(run.loop.step, TrainMeter.line(record))


def _stop(run: RunContext, stop: StopFlag) -> None:
    """A stop request (Ctrl-C, SIGTERM): write ``last.pt`` and raise :class:`Interrupted`."""
    folder = run.folder
    run_state.save(folder.last, run)
    folder.drop_replaced()
    run.bar.close()
    print(f"{stop.name} received: stopped at step {run.loop.step}; checkpoint written to "
          f"{folder.last}. Resume with: auxilia train --resume {folder.path}", flush=True)
    raise Interrupted(stop.signum or signal.SIGINT)
