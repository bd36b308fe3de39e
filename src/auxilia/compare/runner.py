"""Run a sweep: every planned run in sequence or in worker processes, resumable, one display.

Finished runs are skipped and interrupted ones resumed exactly (their ``last.pt``), so running
a sweep again after Ctrl-C, a crash or a new seed continues it. A run that fails (bad config
value found late, non-finite loss, ...) is recorded as failed in ``sweep.json`` with its error
and the sweep goes on; it is retried the next time the sweep runs. A source read from disk once
serves every run of the process that shares it (:class:`DataCache`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilia.compare.collect import SWEEP_FILE
from auxilia.compare.progress import SweepProgress
from auxilia.compare.spec import PlannedRun, Sweep, plan_sweep, sweep_folder
from auxilia.config import Config, parse_config
from auxilia.data.raw import RawData
from auxilia.data.sources import load_dataset, read_source, source_key
from auxilia.data.types import DatasetSplits
from auxilia.engine import state as run_state

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

    Args:
        sweep: the variants, seeds and budget.
        workers: runs at once, each in its own process (default ``sweep.workers``); the CPU's
            threads are shared among them.
        display: a live progress display (default: when the output is a terminal).
        on_step: called as ``on_step(run_key, step)`` after every step (sequential runs only).

    Raises:
        SweepError: a problem :func:`plan_sweep` finds; nothing has trained then.
        KeyboardInterrupt: Ctrl-C or SIGTERM, once the current runs wrote their ``last.pt``;
            running the sweep again continues.
    """
    plans = plan_sweep(sweep)
    folder = sweep_folder(sweep)
    folder.mkdir(parents=True, exist_ok=True)
    record = SweepRecord(folder, sweep, plans)
    todo = [i for i, p in enumerate(plans) if p.status != "skipped"]
    workers = max(1, min(workers or sweep.workers, len(todo) or 1))
    progress = SweepProgress(sweep.name, [p.key for p in plans], [p.variant.label for p in plans],
                             todo=todo, workers=workers,
                             live=sys.stdout.isatty() if display is None else display)
    record.write()
    try:
        with progress:
            if workers == 1:
                _sequential(plans, todo, record, progress, on_step)
            else:
                _parallel(plans, todo, record, progress, workers)
    finally:
        record.write()
    return SweepOutcome(folder, [plans[i].key for i in todo if record.status[i] == "finished"],
                        {plans[i].key: record.error[i] for i in todo
                         if record.status[i] == "failed"},
                        [p.key for p in plans if p.status == "skipped"])


class SweepRecord:
    """``sweep.json``: the variants in order, the baseline, k, and each run's status."""

    def __init__(self, folder: Path, sweep: Sweep, plans: Sequence[PlannedRun]) -> None:
        self.path = folder / SWEEP_FILE
        self.sweep, self.plans = sweep, plans
        self.status = ["finished" if p.status == "skipped" else "pending" for p in plans]
        self.error = [""] * len(plans)

    def set(self, index: int, status: str, error: str = "") -> None:
        self.status[index], self.error[index] = status, error
        self.write()

    def write(self) -> None:
        sweep = self.sweep
        variants = {}
        for v in sweep.variants:
            variants[v.label] = {"folder": v.folder, "method": v.method,
                                 "overrides": list(v.overrides)}
        base = sweep.base if sweep.base is None or isinstance(sweep.base, str | Path) else "config"
        run_state.write_json(self.path, {
            "name": sweep.name, "base": None if base is None else str(base),
            "overrides": list(sweep.overrides), "budget": sweep.budget,
            "seeds": list(sweep.seeds), "baseline": sweep.baseline_label, "k": sweep.k,
            "variants": list(variants), "definitions": variants,
            "runs": [{"folder": p.key, "variant": p.variant.label, "seed": p.seed,
                      "status": s, **({"error": e} if e else {})}
                     for p, s, e in zip(self.plans, self.status, self.error, strict=True)]})


def _total_steps(config: Config, data: DatasetSplits) -> int:
    n = len(data.train)
    per_epoch = max(1, n // min(config.data.batch_size, n))
    return config.train.steps or max(1, round(float(config.train.epochs or 1) * per_epoch))


def _train_one(config: Config, status: str, has_best: bool, cache: DataCache,
               started: Callable[[int], None], step: Callable[[int], None]) -> dict[str, Any]:
    """Train or resume one run; returns its summary."""
    from auxilia.engine.run import train  # here: keeps a worker's import of this module light

    data = cache.get(config)
    started(_total_steps(config, data))
    result = train(config, resume=status == "resumed",
                   # a folder without any checkpoint is what a run that failed early leaves
                   overwrite=status == "trained" and not has_best,
                   callbacks=[lambda s, _losses: step(s)], data=data)
    return result.summary


def _sequential(plans: Sequence[PlannedRun], todo: Sequence[int], record: SweepRecord,
                progress: SweepProgress, on_step: Callable[[str, int], None] | None) -> None:
    cache = DataCache()
    for i in todo:
        plan = plans[i]
        record.set(i, "running")

        def step(s: int, i: int = i, key: str = plan.key) -> None:
            progress.step(i, s)
            if on_step is not None:
                on_step(key, s)

        try:
            _train_one(plan.config, plan.status, plan.folder.best.is_file(), cache,
                       lambda total, i=i: progress.start(i, total), step)
        except KeyboardInterrupt:
            record.set(i, "interrupted")
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
              progress: SweepProgress, workers: int) -> None:
    ctx = mp.get_context("spawn")  # fork would copy the parent's threads and torch state
    tasks: Any = ctx.Queue()
    events: Any = ctx.Queue()
    for i in todo:
        plan = plans[i]
        tasks.put((i, plan.config.to_dict(), plan.status, plan.folder.best.is_file()))
    for _ in range(workers):
        tasks.put(None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker, args=(tasks, events, threads), daemon=False)
             for _ in range(workers)]
    for p in procs:
        p.start()
    pending = set(todo)
    try:
        while pending:
            try:
                kind, i, payload = events.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    for j in sorted(pending):  # a worker died without a word (killed, OOM)
                        record.set(j, "failed", "the worker process ended without a result")
                    break
                progress.refresh()
                continue
            _event(kind, i, payload, record, progress, pending)
    except KeyboardInterrupt:
        progress.message("stopping: each running run writes its last.pt; run the sweep again "
                         "to continue")
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        _drain(events, procs, record, progress, pending)
        raise
    finally:
        for p in procs:
            p.join(timeout=60)


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
    """Collect the workers' last words after Ctrl-C, while they write their checkpoints."""
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            _event(*events.get(timeout=0.5), record, progress, pending)
        except queue.Empty:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            break
    for i in pending:
        if record.status[i] == "running":
            record.set(i, "interrupted")


def _worker(tasks: Any, events: Any, threads: int) -> None:
    """A worker process: train runs from ``tasks`` until a None, reporting on ``events``."""
    import torch

    if hasattr(os, "setpgrp"):
        os.setpgrp()  # out of the terminal's group: the parent forwards exactly one Ctrl-C
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = DataCache()
    while (task := tasks.get()) is not None:
        i, raw, status, has_best = task
        last = [0.0]

        def step(s: int, i: int = i, last: list[float] = last) -> None:
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                events.put(("step", i, s))

        try:
            _train_one(parse_config(raw), status, has_best, cache,
                       lambda total, i=i: events.put(("start", i, total)), step)
        except KeyboardInterrupt:
            events.put(("interrupted", i, None))
            return
        except Exception as err:  # reported to the parent; the sweep goes on
            events.put(("failed", i, f"{type(err).__name__}: {err}"))
            continue
        events.put(("finished", i, None))
