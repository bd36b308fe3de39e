"""Rounds: a pipeline of ordinary runs, where a later round may use an earlier round's results.

Teacher → student distillation, Noisy Student's iterations and fine-tuning from a pretraining
run are each a few runs in a row. A :class:`Pipeline` names them: every :class:`Round` is the
pipeline's base config with ``key=value`` overrides on top (the pipeline's own first, then the
round's), trained by the ordinary :func:`auxilia.engine.train` into its own run folder
``<run.dir>/<pipeline name>/<round name>``. In an override's value, ``{<earlier round>}``
expands to that round's run folder, e.g. ``model.weights={pretrain}/checkpoints/best.pt``.

:func:`run_pipeline` is resumable: a round whose folder holds a finished run is skipped, one
with ``last.pt`` but no summary is resumed exactly, the others are trained. Every reference,
every round's config and every existing folder is checked before anything trains.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilia.config import Config, ConfigError, apply_override, parse_config
from auxilia.config import read_yaml as _read_yaml
from auxilia.engine.labelling import (
    LabelSettings,
    check_label_folder,
    label_status,
    read_record,
    run_labelling,
)
from auxilia.engine.loop import Callback
from auxilia.engine.owned import OwnedFolder
from auxilia.engine.pipefolder import PipelineRecord, check_round_folder, pipeline_owner
from auxilia.engine.pipeline_file import Pipeline, Round, load_pipeline
from auxilia.engine.round_refs import RoundsError, check_names, expand
from auxilia.engine.run import RunResult, train
from auxilia.engine.runfolder import RunFolder
from auxilia.engine.runstatus import (
    Status,
    config_differences,
    folder_status,
    read_summary,
    replaces_failed_start,
)
from auxilia.engine.signals import Interrupted, StopFlag
from auxilia.method_defaults import user_settings

__all__ = ["Pipeline", "PlannedRound", "Round", "RoundFailedError", "RoundResult", "RoundsError",
           "config_differences", "folder_status", "load_pipeline", "plan_pipeline",
           "read_summary", "run_pipeline"]

_DOING = {"trained": "training in", "resumed": "resuming", "skipped": "finished, skipping"}

class RoundFailedError(RuntimeError):
    """A round failed while training; the message names the pipeline, the round and its
    folder, and the round's own error is the ``__cause__``."""


@dataclass(frozen=True)
class PlannedRound:
    """A round's config and what :func:`run_pipeline` will do with its folder."""

    round: Round
    config: Config
    folder: RunFolder
    uses: tuple[str, ...]  # the earlier rounds its overrides refer to
    status: Status


@dataclass
class RoundResult:
    """What one round gave: ``run`` is None for a skipped round (its summary is read back)."""

    name: str
    status: Status
    run_dir: Path
    summary: dict[str, Any]
    run: RunResult | None = None

    @property
    def val_top1(self) -> float | None:
        """Val top-1 of the main exit at the checkpoint selected on val, if one was."""
        return self._selected("val")

    @property
    def test_top1(self) -> float | None:
        """Test top-1 of the main exit at that checkpoint, if one was selected and tested."""
        return self._selected("test")

    def _selected(self, split: str) -> float | None:
        value = (self.summary.get("best_val") or {}).get(split, {}).get("final/top1")
        return None if value is None else float(value)


# --------------------------------------------------------------------------- the plan


def plan_pipeline(pipeline: Pipeline) -> list[PlannedRound]:
    """Every round's config and folder, and whether it is trained, resumed or skipped.

    Nothing is written. Raises before any round trains when a name or a reference is not
    valid, a round's config does not validate, a folder holds a run of another config, or a
    round already ran from an earlier round that must now be trained again.

    Raises:
        RoundsError: naming the round and the fix.
    """
    check_names(pipeline.name, [r.name for r in pipeline.rounds])
    base = pipeline.base
    raw = ({} if base is None else user_settings(base) if isinstance(base, Config)
           else _read_yaml(base))  # a Config base: what its user set (methods' defaults apart)
    names = [r.name for r in pipeline.rounds]
    folders: dict[str, Path] = {}
    plans: list[PlannedRound] = []
    for rnd in pipeline.rounds:
        items, uses = expand(rnd.name, (*pipeline.overrides, *rnd.overrides), folders, names)
        config = _round_config(pipeline.name, rnd, raw, items)
        folder = RunFolder(Path(config.run.dir) / config.run_name())
        folders[rnd.name] = folder.path
        status = (label_status(config, rnd.label, folder.path) if rnd.label is not None
                  else folder_status(config, folder))
        plans.append(PlannedRound(rnd, config, folder, uses, status))
    for plan in plans:
        _check_existing(plan, {p.round.name: p for p in plans})
    return plans


def _round_config(pipeline: str, rnd: Round, base: dict[str, Any], items: list[str]) -> Config:
    raw = copy.deepcopy(base)
    try:
        for item in items:
            apply_override(raw, item)
        config = parse_config(raw)
    except ConfigError as err:
        raise RoundsError(f"round {rnd.name!r}: {err}") from None
    # the round's folder is <run.dir>/<pipeline>/<round>, whatever the base config names
    config.run.dir = str(Path(config.run.dir) / pipeline)
    config.run.name = rnd.name
    return config


# --------------------------------------------------------------------------- folders


def _check_existing(plan: PlannedRound, plans: Mapping[str, PlannedRound]) -> None:
    """Refuse a folder whose run no longer matches its round (before anything trains)."""
    if plan.status == "trained":
        return
    stale = [u for u in plan.uses if plans[u].status != "skipped"]
    if stale:
        raise RoundsError(
            f"round {plan.round.name!r}: {plan.folder.path} holds a run made from round "
            f"{stale[0]!r}, which has no finished run and would be trained again; delete "
            f"{plan.folder.path} so that it is trained again too")
    differ = config_differences(plan.config, plan.folder)
    if differ:
        raise RoundsError(
            f"round {plan.round.name!r}: {plan.folder.path} holds a run of another config:\n"
            + "\n".join(differ) + f"\nrestore the pipeline's settings, or delete "
            f"{plan.folder.path} to train this round again")


# --------------------------------------------------------------------------- running


def run_pipeline(pipeline: Pipeline, *, resume: bool = True,
                 callbacks: Mapping[str, Sequence[Callback]] | None = None) -> list[RoundResult]:
    """Train the pipeline's rounds in order, each through :func:`auxilia.engine.train`.

    The pipeline folder (see :mod:`auxilia.engine.pipefolder`) and every round's run folder
    are checked before anything is written, and the pipeline folder is locked until the end.

    Args:
        pipeline: the rounds and their base config.
        resume: skip the rounds whose folder holds a finished run and resume those with a
            ``last.pt``; with False, a round folder that exists is an error.
        callbacks: per round name, called as ``cb(step, losses)`` after every step.

    Returns:
        One result per round, in order (the rounds' summaries, for a table).

    Raises:
        RoundsError: a problem :func:`plan_pipeline` finds, or a folder the pipeline may not
            write; nothing has trained then.
        RoundFailedError: a round failed (naming it; the error it raised is the cause).
        Interrupted: SIGINT or SIGTERM at any moment (a ``KeyboardInterrupt``), once the
            running round wrote its ``last.pt``; running the pipeline again continues.
    """
    owners = _checked(pipeline, callbacks, resume)  # read-only: fail before any write
    with StopFlag() as stop, contextlib.ExitStack() as locks:
        for owner in owners:
            locks.enter_context(owner.lock())
        owners, plans = _checked(pipeline, callbacks, resume), plan_pipeline(pipeline)
        for owner in owners:
            owner.create()
        records = [PipelineRecord(o.path, pipeline.name, [(p.round.name, p.folder.path,
                                                           p.status) for p in plans])
                   for o in owners]
        return _run_rounds(pipeline.name, plans, dict(callbacks or {}), records, stop)


def _checked(pipeline: Pipeline, callbacks: Mapping[str, Sequence[Callback]] | None,
             resume: bool) -> list[OwnedFolder]:
    plans = plan_pipeline(pipeline)
    unknown = sorted(set(callbacks or {}) - {p.round.name for p in plans})
    if unknown:
        raise RoundsError(f"callbacks for {', '.join(unknown)}: no such round in pipeline "
                          f"{pipeline.name!r}")
    if not resume:
        _refuse_existing(pipeline.name, plans)
    _refuse_nested(plans)
    # a round may set its own run.dir: each folder that holds rounds is the pipeline's
    owners = [pipeline_owner(p) for p in dict.fromkeys(p.folder.path.parent for p in plans)]
    for owner in owners:
        owner.check()
    for plan in plans:
        problem = (check_label_folder(plan.round.name, plan.folder.path)
                   if plan.round.kind == "label"
                   else check_round_folder(plan.round.name, plan.folder, plan.status))
        if problem:
            raise RoundsError(problem)
    return owners


def _refuse_nested(plans: Sequence[PlannedRound]) -> None:
    """Refuse a round whose folder would lie inside another round's run folder (a round's
    ``run.dir={first}``): a run folder holds nothing but its own files."""
    folders = {p.round.name: p.folder.path.resolve() for p in plans}
    for name, folder in folders.items():
        for other, outer in folders.items():
            if other != name and outer in folder.parents:
                raise RoundsError(f"round {name!r}: its folder {folder} would be inside the run "
                                  f"folder of round {other!r}; give it a run.dir outside "
                                  f"{outer} (a run folder holds only its own files)")


def _run_rounds(name: str, plans: Sequence[PlannedRound],
                callbacks: Mapping[str, Sequence[Callback]], records: Sequence[PipelineRecord],
                stop: StopFlag) -> list[RoundResult]:
    def mark(i: int, status: str, error: str = "") -> None:
        for record in records:
            record.set(i, status, error)

    results: list[RoundResult] = []
    try:
        for i, plan in enumerate(plans):
            stop.check()  # a signal between rounds (or as one wrote its summary) ends it here
            if plan.config.run.progress != "off":
                doing = ("labelling into" if plan.round.kind == "label"
                         and plan.status != "skipped" else _DOING[plan.status])
                print(f"round {i + 1}/{len(plans)} {plan.round.name}: {doing} "
                      f"{plan.folder.path}", flush=True)
            if plan.status != "skipped":
                mark(i, "running")
            try:
                results.append(_run_round(plan, callbacks.get(plan.round.name, ())))
            except KeyboardInterrupt:
                mark(i, "interrupted" if plan.folder.last.is_file() else "pending")
                raise
            except Exception as err:
                mark(i, "failed", f"{type(err).__name__}: {err}")
                for record in records:
                    record.end("failed", round_name=plan.round.name)
                raise RoundFailedError(f"pipeline {name!r}, round {plan.round.name!r} "
                                       f"({plan.folder.path}): {err}") from err
            mark(i, "finished")
        stop.check()
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", None) or stop.signum or signal.SIGINT
        for record in records:
            record.end("interrupted", signum=signum)
        print(f"{signal.Signals(signum).name} received: pipeline {name!r} stopped; finished "
              "rounds are skipped next time, a stopped one resumes from its last.pt",
              file=sys.stderr, flush=True)
        raise Interrupted(signum) from None
    for record in records:
        record.end("finished")
    return results


def _refuse_existing(name: str, plans: Sequence[PlannedRound]) -> None:
    existing = [str(p.folder.path) for p in plans
                if p.folder.path.is_dir() and any(p.folder.path.iterdir())]
    if existing:
        raise RoundsError(f"pipeline {name!r}: {', '.join(existing)} already exist; run it with "
                          "resume to skip finished rounds and continue the others, or delete them")


def _run_round(plan: PlannedRound, callbacks: Sequence[Callback]) -> RoundResult:
    name = plan.round.name
    if plan.round.label is not None:
        return _label_round(plan, plan.round.label)
    if plan.status == "skipped":
        return RoundResult(name, "skipped", plan.folder.path, read_summary(plan.folder))
    result = train(plan.config, resume=plan.status == "resumed",
                   overwrite=replaces_failed_start(plan.status, plan.folder),
                   callbacks=callbacks)
    return RoundResult(name, plan.status, result.run_dir, result.summary, result)


def _label_round(plan: PlannedRound, settings: LabelSettings) -> RoundResult:
    folder = plan.folder.path
    if plan.status == "skipped":
        return RoundResult(plan.round.name, "skipped", folder, read_record(folder))
    result = run_labelling(plan.config, settings, folder)
    return RoundResult(plan.round.name, "trained", folder, result.record)
