"""One run from start to end: build, lock, create or resume the run folder, train, summarize.

:func:`train` is what ``auxilia train`` and :func:`auxilia.train` call. The loop itself is
:func:`auxilia.engine.loop.run_loop`; this module owns everything around it: the order in which
a run is validated, built, locked and written (nothing is replaced before the run is built),
resumption, and the summary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from auxilia.config import Config, check_run_name
from auxilia.data.types import DatasetSplits
from auxilia.engine import distributed
from auxilia.engine import state as run_state
from auxilia.engine.anytime import model_flops, sample_images
from auxilia.engine.auto import resolve_for
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint
from auxilia.engine.context import RunContext, build_run
from auxilia.engine.datacheck import check_same_data, write_data_identity
from auxilia.engine.distributed import Ready, barrier, check_distributable, wait_for_rank0
from auxilia.engine.header import Header, run_header
from auxilia.engine.loop import Callback, run_loop
from auxilia.engine.owned import check_not_in_busy_folder
from auxilia.engine.runidentity import check_same_run, checkpoint_run_id
from auxilia.engine.runio import RunIO
from auxilia.engine.runlog import MetricsLog, RunFolder
from auxilia.engine.selection import best_on_val, per_model_records
from auxilia.engine.setup import Setup, build_setup, pick_device
from auxilia.engine.signals import StopFlag
from auxilia.engine.teacher import (
    check_same_teacher,
    describe_teacher,
    finish_report,
    teacher_report,
)
from auxilia.engine.teacher_runs import (
    check_no_unfinished_students,
    check_not_own_teacher,
    record_student,
)
from auxilia.ranks import Ranks
from auxilia.recipes import deploy_reason
from auxilia.report import plot_curves, summarize
from auxilia.seeding import determinism_summary, deterministic_mode

__all__ = ["RunResult", "train"]


@dataclass
class RunResult:
    """What ``auxilia.train`` returns."""

    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module = field(repr=False)

    @property
    def test_top1(self) -> float:
        """Test top-1 of the main exit at the checkpoint selected on validation."""
        return float(self._selected()["test"]["final/top1"])

    @property
    def val_top1(self) -> float:
        return float(self._selected()["val"]["final/top1"])

    def _selected(self) -> dict[str, Any]:
        best = self.summary.get("best_val")
        if not best:
            raise ValueError(f"{self.run_dir}: no evaluation had a finite validation loss and "
                             "top-1, so no checkpoint was selected")
        return best


def train(config: Config, *, resume: bool = False, overwrite: bool = False,
          callbacks: Sequence[Callback] = (), data: DatasetSplits | None = None,
          teacher: nn.Module | None = None, header: Header | None = None) -> RunResult:
    """Train a run described by ``config`` into ``run.dir/<run name>``.

    Args:
        config: the validated run configuration.
        resume: continue the run folder's ``last.pt`` exactly (the config must match);
            temporaries left by a crash during a write are removed, and a ``best.pt`` that
            a crash left behind ``last.pt``'s selection is rewritten.
        overwrite: replace an existing run folder.
        callbacks: called as ``cb(step, losses)`` after every optimizer step.
        data: already loaded splits (e.g. shared by the runs of a comparison); by default
            they are loaded from ``config.data``.
        teacher: any ``nn.Module`` as the teacher of ``kd``/``hints`` (instead of
            ``config.teacher``); see :mod:`auxilia.teachers`.
        header: receives the lines the run would print before its first step (data, splits,
            model, budget, notes; :func:`auxilia.engine.header.run_header`), for a display
            that shows them itself (a sweep's); by default they are printed unless
            ``run.progress=off``.

    Raises:
        KeyboardInterrupt: after Ctrl-C, once a resumable checkpoint is written.
        NonFiniteLossError: the loss or the gradients became NaN/inf
            (``train.on_nonfinite=stop``); no checkpoint is written for that step.
        OSError: a log or checkpoint write failed (e.g. a full disk); the message names the
            file, and the previous checkpoint is intact.
    """
    device = pick_device(config.train.device)
    with distributed.session(device) as ranks:
        if ranks.several:
            check_distributable(config, device)
        if not ranks.main:
            return _follow(config, ranks, resume=resume, callbacks=callbacks, data=data,
                           teacher=teacher)
        ready = Ready(ranks)
        try:
            return _train(config, ready, resume=resume, overwrite=overwrite,
                          callbacks=callbacks, data=data, teacher=teacher, header=header)
        except BaseException as err:
            ready.fail(f"{type(err).__name__}: {err}")
            raise


def _train(config: Config, ready: Ready, *, resume: bool, overwrite: bool,
           callbacks: Sequence[Callback], data: DatasetSplits | None,
           teacher: nn.Module | None, header: Header | None) -> RunResult:
    """:func:`train` in the process that writes the run (the only one, or rank 0)."""
    config, choice = resolve_for(config, data, pick_device(config.train.device))
    folder = RunFolder(Path(config.run.dir) / check_run_name(config.run_name()))
    check_not_own_teacher(config.teacher, folder.path)  # before anything is written
    check_not_in_busy_folder(folder.path)  # a sweep's or pipeline's, run by another process
    if not resume:
        folder.check(resume=False, overwrite=overwrite)  # read-only: fail before any work
        if overwrite and folder.path.is_dir():  # a teacher replaced under its student
            check_no_unfinished_students(folder.path)
    # deterministic kernels for this run only: the switches are restored when it ends
    with deterministic_mode(config.train.deterministic), StopFlag() as stop:
        if resume:
            if not folder.path.is_dir():
                folder.check(resume=True, overwrite=False)  # names the missing folder
            with folder.lock():  # a run still writing its first checkpoint is named as such
                folder.check(resume=True, overwrite=False)
                return _resume(config, folder, data, callbacks, stop, teacher, header, ready)
        setup = build_setup(config, data, teacher=teacher)  # fails before any folder is touched
        if choice:
            setup.data.notes.insert(0, choice)
        run = build_run(setup)
        with folder.lock():
            folder.check(resume=False, overwrite=overwrite)  # again, now that we hold it
            folder.create()  # an old run is moved aside until the first checkpoint
            for stale in folder.stale_replacements():
                setup.data.notes.append(f"{stale} holds a run that an interrupted --overwrite "
                                        f"moved aside; delete it, or move it back")
            try:
                folder.write_config(config.to_dict())
                write_data_identity(folder.data, setup.data)
                return _train_from(run, folder, callbacks, stop, header, ready, resumed=False)
            except BaseException:
                if folder.restore_replaced():
                    print(f"the new run stopped before its first checkpoint; the previous run "
                          f"is back in {folder.path}", file=sys.stderr)
                raise


def _resume(config: Config, folder: RunFolder, data: DatasetSplits | None,
            callbacks: Sequence[Callback], stop: StopFlag, teacher: nn.Module | None,
            header: Header | None, ready: Ready) -> RunResult:
    """Continue ``folder``'s ``last.pt`` (the caller holds the folder's lock)."""
    folder.remove_stale_temporaries()  # left by a crash during an atomic write
    checkpoint = load_checkpoint(folder.last)
    run_note = check_same_run(checkpoint, folder)  # a last.pt copied in from another run
    run_state.check_compatible(checkpoint["config"], config.to_dict(), folder.last)
    if config.run.progress != "off":
        total = (checkpoint["loop"].get("derived_steps")  # a train.time run's own total
                 or config.train.steps or f"{config.train.epochs:g} epochs of")
        print(f"resuming {folder.path} from step {checkpoint['loop']['step']} "
              f"(of {total} steps; {folder.last})", flush=True)
    setup = build_setup(config, data, teacher=teacher)
    check_same_teacher(checkpoint, setup.objective.slots, folder.last)  # not retrained since
    note = check_same_data(checkpoint, setup.data, folder.path)
    setup.data.notes.extend(n for n in (note, run_note) if n)
    run = build_run(setup)
    run.io.folder = folder
    run_state.restore(checkpoint, run)
    if folder.run_id() is None:  # a run folder made before the marker, or its id, existed
        folder.write_marker(checkpoint_run_id(checkpoint))  # before best.pt may be rewritten
    _repair_best(run)
    return _train_from(run, folder, callbacks, stop, header, ready, resumed=True)


def _train_from(run: RunContext, folder: RunFolder, callbacks: Sequence[Callback],
                stop: StopFlag, header: Header | None, ready: Ready, *, resumed: bool
                ) -> RunResult:
    setup, config, loop = run.setup, run.config, run.loop
    run.io.folder = folder
    ready.go(config.data.batch_size, setup.data.notes)  # the other ranks build and train too
    record_student(config.teacher, folder.path)  # so that the teacher is not overwritten
    teacher = teacher_report(run)
    lines = run_header(run, setup.data.notes,
                       describe_teacher(teacher) if teacher is not None else None)
    if header is not None:  # a sweep or pipeline shows it in its own display
        header(lines)
    elif config.run.progress != "off":
        for line in lines:
            print(line, flush=True)
    else:  # quiet runs still say what was done to the data
        for note in setup.data.notes:
            print(f"note: {folder.path}: {note}", file=sys.stderr, flush=True)
    run.io.log = MetricsLog(folder, tensorboard=config.run.tensorboard,
                            resume_step=loop.step if resumed else None)
    try:
        run_loop(run, callbacks, stop)
    finally:
        run.io.log.close()
    result = _finish(run, finish_report(run, teacher))
    barrier(ready.ranks)  # the summary is written: the other ranks may read it
    return result


def _follow(config: Config, ranks: Ranks, *, resume: bool, callbacks: Sequence[Callback],
            data: DatasetSplits | None, teacher: nn.Module | None) -> RunResult:
    """:func:`train` on a rank but 0: the same run, built alike, trained on its share of
    every batch; it writes nothing and returns the summary rank 0 wrote."""
    config, _ = resolve_for(config, data, pick_device(config.train.device))
    folder = RunFolder(Path(config.run.dir) / check_run_name(config.run_name()))
    with deterministic_mode(config.train.deterministic), StopFlag() as stop:
        wait_for_rank0(ranks)  # rank 0 has checked, locked and written the folder
        run = build_run(build_setup(config, data, teacher=teacher))
        run.io = RunIO(folder, writes=False)
        if resume:
            run_state.restore(load_checkpoint(folder.last), run)
        run_loop(run, callbacks, stop)
        barrier(ranks)  # rank 0 has written the summary
    summary = json.loads(folder.summary.read_text())
    return RunResult(folder.path, summary, run.models[run.objective.deployed])


def _repair_best(run: RunContext) -> None:
    """Rewrite ``best.pt`` when a crash came between writing ``last.pt`` and ``best.pt``.

    ``last.pt`` is written first; if it selected its own step as the best, ``best.pt`` must
    hold that step too, and the restored state is exactly what it should hold.
    """
    loop, folder = run.loop, run.io.folder
    assert folder is not None
    if loop.best is None or loop.best["step"] != loop.step:
        return
    try:
        current = load_checkpoint(folder.best)["loop"]["step"] == loop.step
    except (CheckpointError, KeyError, TypeError):
        current = False
    if not current:
        run_state.save(folder.best, run)


def _finish(run: RunContext, slots: dict[str, Any]) -> RunResult:
    setup, cfg, loop, folder = run.setup, run.config, run.loop, run.io.folder
    assert folder is not None
    summary = summarize(loop.evals, loop.best, cfg.train.keep_last_evals)
    summary.update(_models_summary(run))
    seconds = max(loop.train_seconds, 1e-9)
    views = max(1, len(setup.train_views))
    summary.update({
        "run": str(folder.path), "steps": loop.step, "skipped_steps": loop.skipped_steps,
        "scaler_skipped_steps": loop.scaler_skips,
        "train_seconds": round(loop.train_seconds, 3), "train_images": loop.images,
        "wall_seconds": round(loop.wall_seconds, 3),  # steps, evaluations and checkpoints
        **({"time_budget": loop.time_budget} if loop.time_budget else {}),
        # one image per sample drawn, whatever the number of augmented views of it
        "train_images_per_s": round(loop.images / seconds, 1),
        "train_views_per_s": round(loop.images * views / seconds, 1),
        "params": {"total": _count(setup.model), "deployed": _count(setup.model.strip()),
                   "trainable": sum(p.numel() for p in setup.model.parameters()
                                    if p.requires_grad)},
        "flops": _flops(setup), "machine": _machine(setup),
        "exits": list(setup.model.exits), "methods": [m.name for m in cfg.method],
        "splits": {name: {"count": len(split), "origin": setup.data.origins.get(name, "")}
                   for name in ("train", "val", "test", "unlabeled")
                   if (split := getattr(setup.data, name)) is not None},
        "notes": setup.data.notes, "determinism": determinism_summary(), **slots,
    })
    run_state.write_json(folder.summary, summary)
    if cfg.run.plot:
        plot_curves(folder.read_records(), folder.curves)
    return RunResult(folder.path, summary, run.models[run.objective.deployed])


def _models_summary(run: RunContext) -> dict[str, Any]:
    """With more than one model evaluated (the student and an EMA model): each one's last,
    best-on-validation and median of the last k (each selected on its own validation
    numbers), and the pseudo-label quality on the unlabeled split at the last evaluation."""
    evals, k = run.loop.evals, run.config.train.keep_last_evals
    deployed = run.objective.deployed
    out: dict[str, Any] = {"deployed": deployed,
                           "deployed_because": deploy_reason(run.config.method, deployed)}
    others = per_model_records(evals)
    if others:
        models = {run.objective.deployed: summarize(evals, run.loop.best, k)}
        for name, records in others.items():
            models[name] = summarize(records, best_on_val(records), k)
        out["models"] = models
    last = evals[-1] if evals else {}
    unlabeled = {key: v for key, v in last.items() if key.split(":")[-1].startswith("unlabeled/")}
    if unlabeled:
        out["unlabeled"] = unlabeled
    return out


def _flops(setup: Setup) -> dict[str, Any]:
    """FLOPs per image (training model, deployed model, each exit) for the comparison tables."""
    try:
        return model_flops(setup.model, setup.model.strip(), sample_images(setup, 1))
    except Exception as err:  # a model the tracer cannot follow still finishes its run
        return {"error": f"{type(err).__name__}: {err}"}


def _machine(setup: Setup) -> dict[str, Any]:
    """Where the run trained, so that a comparison table can say it."""
    import os
    import platform

    import torch

    device = setup.device
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {"device": str(device), "name": name, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(terse=True)}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
