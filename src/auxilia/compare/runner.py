"""Run a sweep: every planned run in sequence or in worker processes, resumable, one display.

Finished runs are skipped and interrupted ones resumed exactly (their ``last.pt``), so running
a sweep again after Ctrl-C, a crash or a new seed continues it. A run that fails (bad config
value found late, non-finite loss, ...) is recorded as failed in ``sweep.json`` with its error
and the sweep goes on; it is retried the next time the sweep runs. A source read from disk once
serves every run of the process that shares it (:class:`DataCache`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilia.compare.progress import SweepProgress
from auxilia.compare.spec import PlannedRun, Sweep, plan_sweep, sweep_folder
from auxilia.compare.sweepfolder import (
    SweepRecord,
    check_run_folders,
    check_same_sweep,
    sweep_owner,
)
from auxilia.config import Config, parse_config
from auxilia.data.raw import RawData
from auxilia.data.sources import load_dataset, read_source, source_key
from auxilia.data.streams import IndexStream
from auxilia.data.types import DatasetSplits
from auxilia.engine.auto import resolve
from auxilia.engine.header import Header, HeaderDedup
from auxilia.engine.owned import OwnedFolder
from auxilia.engine.runstatus import replaces_failed_start
from auxilia.engine.signals import STOP_SIGNALS, Interrupted, StopFlag

__all__ = ["DataCache", "SweepOutcome", "run_sweep"]

Event = tuple[str, int, Any]  # (kind, run index, payload)


class DataCache:
    """Sources read once per process; each run gets its own splits (its seed's subset)."""

    def __init__(self, max_sources: int = 2) -> None:
        self._sources: OrderedDict[str, RawData] = OrderedDict()
        self.max_sources = max_sources
        self.reads = 0  # sources decoded from disk, for tests and the log

    def get(self, config: Config) -> DatasetSplits:
        key = source_key(config.data)
        if key not in self._sources:
            self._sources[key] = read_source(config.data)
            self.reads += 1
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        self._sources.move_to_end(key)
        return load_dataset(config.data, seed=config.seed, source=self._sources[key])


@dataclass
class SweepOutcome:
    """What a sweep run did: its folder, and the run keys by what happened to them."""

    folder: Path
    finished: list[str]
    failed: dict[str, str]
    skipped: list[str]


def run_sweep(sweep: Sweep, *, workers: int | None = None, display: bool | None = None,
              on_step: Callable[[str, int], None] | None = None) -> SweepOutcome:
    """Train every run of ``sweep`` that has not finished.

    The sweep folder (see :mod:`auxilia.compare.sweepfolder`) and every run folder the sweep
    will write are checked before anything is written; the folder is locked for the whole
    sweep, so a second process running the same sweep is refused naming the first.

    Args:
        sweep: the variants, seeds and budget.
        workers: runs at once, each in its own process (default ``sweep.workers``); the CPU's
            threads are shared among them.
        display: a live progress display (default: when the output is a terminal).
        on_step: called as ``on_step(run_key, step)`` after every step (sequential runs only).

    Raises:
        SweepError: a problem :func:`plan_sweep` finds, or a folder the sweep may not write;
            nothing has trained then.
        RunLockedError: another process is running this sweep.
        Interrupted: SIGINT or SIGTERM at any moment (a ``KeyboardInterrupt``): the running
            runs wrote their ``last.pt``, the workers have ended and ``sweep.json`` says
            ``interrupted``; running the sweep again continues.
    """
    folder = sweep_folder(sweep)
    owner = sweep_owner(folder)
    check_run_folders(_checked_plan(sweep, owner))  # read-only: fail before any write
    with StopFlag() as stop, owner.lock():
        plans = _checked_plan(sweep, owner)  # again, now that no other process can change it
        check_run_folders(plans)
        owner.create()
        record = SweepRecord(folder, sweep, plans)
        todo = [i for i, p in enumerate(plans) if p.status != "skipped"]
        workers = max(1, min(workers or sweep.workers, len(todo) or 1))
        progress = SweepProgress(sweep.name, [p.key for p in plans],
                                 [p.variant.label for p in plans], todo=todo, workers=workers,
                                 live=sys.stdout.isatty() if display is None else display)
        record.write()
        try:
            with progress:
                if workers == 1:
                    _sequential(plans, todo, record, progress, on_step, stop)
                else:
                    _parallel(plans, todo, record, progress, workers, stop)
            stop.check()  # a signal while the last run wrote its summary stops the sweep too
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", None) or stop.signum or signal.SIGINT
            record.end(signum)
            raise Interrupted(signum) from None
        record.end()
    return SweepOutcome(folder, [plans[i].key for i in todo if record.status[i] == "finished"],
                        {plans[i].key: record.error[i] for i in todo
                         if record.status[i] == "failed"},
                        [p.key for p in plans if p.status == "skipped"])


def _checked_plan(sweep: Sweep, owner: OwnedFolder) -> list[PlannedRun]:
    owner.check()
    check_same_sweep(owner.path, sweep)
    return plan_sweep(sweep)


def _total_steps(config: Config, data: DatasetSplits) -> int | None:
    """The run's steps as training counts them (epochs of its labeled stream), or None for a
    ``train.time`` budget: the run derives its steps as it starts."""
    if config.train.time is not None:
        return None
    labeled = IndexStream(len(data.train), config.data.batch_size, seed=config.seed)
    return config.train.total_steps(labeled.batches_per_epoch)


def _train_one(config: Config, status: str, overwrite: bool, cache: DataCache, stop: StopFlag,
               started: Callable[[int | None], None], step: Callable[[int], None],
               header: Header) -> dict[str, Any]:
    """Train or resume one run; returns its summary.

    The data is loaded for the resolved config (``auto`` model and size, resolved as
    ``train`` resolves them), so a sweep trains at the size a single run picks.
    """
    from auxilia.engine.run import train  # here: keeps a worker's import of this module light

    data = cache.get(resolve(config)[0])
    stop.check()  # a signal while the data was read: the run is not started
    started(_total_steps(config, data))
    result = train(config, resume=status == "resumed",
                   overwrite=overwrite,  # replaces_failed_start, decided in the parent
                   callbacks=[lambda s, _losses: step(s)], data=data, header=header)
    return result.summary


def _sequential(plans: Sequence[PlannedRun], todo: Sequence[int], record: SweepRecord,
                progress: SweepProgress, on_step: Callable[[str, int], None] | None,
                stop: StopFlag) -> None:
    cache = DataCache()
    show = HeaderDedup(progress.message)
    for i in todo:
        stop.check()  # a signal between two runs (or as the last one ended) ends the sweep
        plan = plans[i]
        record.set(i, "running")

        def step(s: int, i: int = i, key: str = plan.key) -> None:
            progress.step(i, s)
            if on_step is not None:
                on_step(key, s)

        try:
            _train_one(plan.config, plan.status, replaces_failed_start(plan.status, plan.folder),
                       cache, stop,
                       lambda total, i=i: progress.start(i, total), step,
                       lambda lines, key=plan.key: show(key, lines))
        except KeyboardInterrupt:
            record.set(i, "interrupted" if plan.folder.last.is_file() else "pending")
            progress.message(f"stopped in {plan.key}; run the sweep again to continue (finished "
                             "runs are skipped, this one resumes from its last.pt)")
            raise
        except Exception as err:  # one failed run must not end the sweep
            record.set(i, "failed", f"{type(err).__name__}: {err}")
            progress.finish(i, failed=True, error=record.error[i])
            continue
        record.set(i, "finished")
        progress.finish(i)


# --------------------------------------------------------------------------- workers


def _parallel(plans: Sequence[PlannedRun], todo: Sequence[int], record: SweepRecord,
              progress: SweepProgress, workers: int, stop: StopFlag) -> None:
    """Runs in worker processes. A stop request reaches every worker as the same signal: each
    running run writes its ``last.pt`` and every worker ends before this returns."""
    ctx = mp.get_context("spawn")  # fork would copy the parent's threads and torch state
    tasks: Any = ctx.Queue()
    events: Any = ctx.Queue()
    for i in todo:
        plan = plans[i]
        tasks.put((i, plan.config.to_dict(), plan.status,
                   replaces_failed_start(plan.status, plan.folder)))
    for _ in range(workers):
        tasks.put(None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    stopping = ctx.Event()  # set before the signal is forwarded: no worker starts a new run
    procs = [ctx.Process(target=_worker, args=(tasks, events, threads, os.getpid(), stopping),
                         daemon=False) for _ in range(workers)]
    # a worker starts with the stop signals blocked (the mask survives fork and exec) and
    # unblocks them once its own flag handles them: a Ctrl-C to the terminal's whole group
    # while it imports never kills it half-way; the parent's own signal waits, not lost
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    pending = set(todo)
    show = HeaderDedup(progress.message)
    try:
        while pending:
            stop.check()
            try:
                kind, i, payload = events.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and not stop.requested:
                    _last_words(events, record, progress, pending)  # sent just before the end
                    for j in sorted(pending):  # a worker died without a word (killed, OOM)
                        record.set(j, "failed", "the worker process ended without a result")
                    break
                progress.refresh()
                continue
            if kind == "header":
                show(plans[i].key, payload)
                continue
            _event(kind, i, payload, record, progress, pending)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", None) or stop.signum or signal.SIGINT
        progress.message(f"{signal.Signals(signum).name} received: each running run writes its "
                         "last.pt; run the sweep again to continue")
        stopping.set()
        _signal(procs, signum)
        _drain(events, procs, record, progress, pending)
        raise Interrupted(signum) from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():  # never leave a worker behind to train on its own
                p.kill()
                p.join()


def _signal(procs: Sequence[Any], signum: int) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(p.pid, signum)


def _event(kind: str, i: int, payload: Any, record: SweepRecord, progress: SweepProgress,
           pending: set[int]) -> None:
    if kind == "start":
        record.set(i, "running")
        progress.start(i, payload)
    elif kind == "step":
        progress.step(i, payload)
    elif kind in ("finished", "failed", "interrupted"):
        record.set(i, kind, payload or "")
        pending.discard(i)
        if kind != "interrupted":
            progress.finish(i, failed=kind == "failed", error=payload or "")


def _drain(events: Any, procs: Sequence[Any], record: SweepRecord, progress: SweepProgress,
           pending: set[int]) -> None:
    """Collect the workers' last words after a stop request, while they write their
    checkpoints; a second signal kills them at once."""
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            _event(*events.get(timeout=0.5), record, progress, pending)
        except queue.Empty:
            continue
        except KeyboardInterrupt:  # a second signal: abort
            for p in procs:
                p.kill()
            break
    _last_words(events, record, progress, pending)
    for i in pending:  # a worker that ended without a word: its run stopped, or never began
        if record.status[i] in ("running", "failed"):
            resumable = record.plans[i].folder.last.is_file()
            record.set(i, "interrupted" if resumable else "pending")


def _last_words(events: Any, record: SweepRecord, progress: SweepProgress,
                pending: set[int]) -> None:
    """The events workers sent just before they ended (still in the pipe)."""
    while True:
        try:
            _event(*events.get(timeout=0.2), record, progress, pending)
        except (queue.Empty, OSError, ValueError):
            break


def _worker(tasks: Any, events: Any, threads: int, parent: int, stopping: Any) -> None:
    """A worker process: train runs from ``tasks`` until a None or a stop request, reporting
    on ``events``. It stops like the parent on SIGINT/SIGTERM, and by itself (writing its
    run's ``last.pt``) when the parent dies without a word (``kill -9``)."""
    import torch

    if hasattr(os, "setpgrp"):
        os.setpgrp()  # out of the terminal's group: the parent forwards exactly one Ctrl-C
    torch.set_num_threads(threads)
    cache = DataCache()
    with StopFlag() as stop:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent
        _watch_parent(parent, events)
        while not _stopping(stop, stopping) and (task := tasks.get()) is not None \
                and not _stopping(stop, stopping):
            i, raw, status, overwrite = task
            last = [0.0]

            def step(s: int, i: int = i, last: list[float] = last) -> None:
                now = time.monotonic()
                if now - last[0] > 0.5:
                    last[0] = now
                    events.put(("step", i, s))

            try:
                _train_one(parse_config(raw), status, overwrite, cache, stop,
                           lambda total, i=i: events.put(("start", i, total)), step,
                           lambda lines, i=i: events.put(("header", i, lines)))
            except KeyboardInterrupt:
                events.put(("interrupted", i, None))
                return
            except Exception as err:  # reported to the parent; the sweep goes on
                events.put(("failed", i, f"{type(err).__name__}: {err}"))
                continue
            events.put(("finished", i, None))


def _stopping(stop: StopFlag, stopping: Any) -> bool:
    return stop.requested or stopping.is_set()


def _watch_parent(parent: int, events: Any) -> None:
    """Send this process SIGTERM once its parent is gone (it is then re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        events.cancel_join_thread()  # never hang at exit on words nobody will read
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="auxilia-parent-watch", daemon=True).start()
