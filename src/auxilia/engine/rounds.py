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

import copy
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auxilia.config import Config, ConfigError, apply_override, check_run_name, parse_config
from auxilia.config import read_yaml as _read_yaml
from auxilia.config_errors import describe, suggest
from auxilia.engine import state as run_state
from auxilia.engine.auto import resolve_for
from auxilia.engine.loop import Callback
from auxilia.engine.run import RunResult, train
from auxilia.engine.runfolder import RunFolder
from auxilia.engine.setup import pick_device
from auxilia.paths import regular_file

__all__ = ["Pipeline", "PlannedRound", "Round", "RoundResult", "RoundsError",
           "config_differences", "folder_status", "load_pipeline", "plan_pipeline",
           "read_summary", "run_pipeline"]

Status = Literal["trained", "resumed", "skipped"]
_DOING = {"trained": "training in", "resumed": "resuming", "skipped": "finished, skipping"}

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""A round's name: also what ``{name}`` may hold, so that a YAML flow mapping such as
``{s1: 0.3}`` in an override's value is never taken for a reference."""
REFERENCE = re.compile(r"\{(" + NAME.pattern + r")\}")


UNRESOLVED = ("auto", "native")
"""Config values the run folder records resolved (against the data)."""


class RoundsError(ConfigError):
    """A pipeline problem found before training: the message names the round and the fix."""


@dataclass(frozen=True)
class Round:
    """One run of a pipeline: its name (also its run folder's) and its overrides."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """Rounds trained in order from one base config.

    Attributes:
        name: the folder under ``run.dir`` that holds the rounds' run folders.
        base: a YAML config file, a :class:`Config`, or None for the defaults.
        rounds: the rounds, in the order they train.
        overrides: ``key=value`` items applied to every round, before the round's own.
    """

    name: str
    base: str | Path | Config | None
    rounds: tuple[Round, ...]
    overrides: tuple[str, ...] = ()


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


# --------------------------------------------------------------------------- the file


class _RoundFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    overrides: list[str] = Field(default_factory=list)


class _PipelineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str | None = Field(default=None, description="relative to the pipeline file")
    overrides: list[str] = Field(default_factory=list)
    rounds: list[_RoundFile] = Field(min_length=1)


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read a pipeline file; ``overrides`` (the command line's) apply last, to every round.

    The file holds ``name``, ``base`` (a config file, relative to the pipeline file),
    ``overrides`` (for every round) and ``rounds`` (a list of ``{name, overrides}``).

    Raises:
        ConfigError: the file is missing, unreadable or not YAML (a :class:`RoundsError`
            when it holds unknown keys or wrong types, each on its own line with the valid
            keys, or a name is not valid).
    """
    path = regular_file(path, "pipeline file", RoundsError)  # named as such when missing
    raw = _read_yaml(path)
    try:
        spec = _PipelineFile.model_validate(raw)
    except ValidationError as err:
        raise RoundsError(f"{path}: invalid pipeline:\n  "
                          + "\n  ".join(_describe_file(err))) from None
    base = None
    if spec.base is not None:
        base = Path(spec.base).expanduser()
        base = base if base.is_absolute() else path.parent / base
    rounds = tuple(Round(r.name, (*r.overrides, *overrides)) for r in spec.rounds)
    pipeline = Pipeline(spec.name, base, rounds, tuple(spec.overrides))
    _check_names(pipeline)
    return pipeline


def _describe_file(err: ValidationError) -> list[str]:
    """One line per problem; describe() alone finds no valid keys inside a list's items."""
    lines = []
    for line, e in zip(describe(err, _PipelineFile), err.errors(), strict=True):
        loc = e["loc"]
        if e["type"] == "extra_forbidden" and len(loc) == 3 and loc[0] == "rounds":
            valid = list(_RoundFile.model_fields)
            line = (f"rounds[{loc[1]}].{loc[2]}: unknown key{suggest(str(loc[2]), valid)}; "
                    f"valid keys here: {', '.join(valid)}")
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- the plan


def plan_pipeline(pipeline: Pipeline) -> list[PlannedRound]:
    """Every round's config and folder, and whether it is trained, resumed or skipped.

    Nothing is written. Raises before any round trains when a name or a reference is not
    valid, a round's config does not validate, a folder holds a run of another config, or a
    round already ran from an earlier round that must now be trained again.

    Raises:
        RoundsError: naming the round and the fix.
    """
    _check_names(pipeline)
    base = pipeline.base
    raw = {} if base is None else base.to_dict() if isinstance(base, Config) else _read_yaml(base)
    names = [r.name for r in pipeline.rounds]
    folders: dict[str, Path] = {}
    plans: list[PlannedRound] = []
    for rnd in pipeline.rounds:
        items, uses = _expand(rnd, (*pipeline.overrides, *rnd.overrides), folders, names)
        config = _round_config(pipeline.name, rnd, raw, items)
        folder = RunFolder(Path(config.run.dir) / config.run_name())
        folders[rnd.name] = folder.path
        plans.append(PlannedRound(rnd, config, folder, uses, folder_status(config, folder)))
    for plan in plans:
        _check_existing(plan, {p.round.name: p for p in plans})
    return plans


def _check_names(pipeline: Pipeline) -> None:
    _plain(pipeline.name, "pipeline name")
    if not pipeline.rounds:
        raise RoundsError(f"pipeline {pipeline.name!r} has no rounds; list at least one")
    seen: set[str] = set()
    for rnd in pipeline.rounds:
        _plain(rnd.name, "round name")
        if not NAME.fullmatch(rnd.name):
            raise RoundsError(f"round name {rnd.name!r}: use letters, digits and . _ + - only "
                              "(starting with a letter or digit), so that {name} refers to it")
        if rnd.name in seen:
            raise RoundsError(f"round name {rnd.name!r} is used twice; round names are their "
                              "run folders' names and must differ")
        seen.add(rnd.name)


def _plain(name: str, what: str) -> None:
    try:
        check_run_name(name)
    except ValueError as err:
        raise RoundsError(str(err).replace("run.name", what, 1)) from None


def _expand(rnd: Round, items: Sequence[str], folders: Mapping[str, Path],
            names: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """``items`` with every ``{round}`` in a value replaced by that round's folder."""
    uses: list[str] = []

    def folder_of(match: re.Match[str], item: str) -> str:
        ref = match.group(1)
        if ref not in folders:
            raise RoundsError(_bad_reference(rnd.name, ref, item, list(folders), names))
        uses.append(ref)
        return str(folders[ref])

    expanded = []
    for item in items:
        key, sep, value = item.partition("=")
        if key.strip() == "run.name":
            raise RoundsError(f"round {rnd.name!r}: {item!r}: the round's name is its run.name; "
                              "drop the override (run.dir places the pipeline's folder)")
        value = REFERENCE.sub(lambda m, item=item: folder_of(m, item), value)
        expanded.append(key + sep + value)
    return expanded, tuple(dict.fromkeys(uses))


def _bad_reference(name: str, ref: str, item: str, earlier: list[str],
                   names: Sequence[str]) -> str:
    if ref == name:
        why = "is this round itself"
    elif ref in names:
        why = "comes later"
    else:
        why = "is not a round of this pipeline"
    valid = ", ".join(earlier) if earlier else "none, it is the first round"
    return (f"round {name!r}: {{{ref}}} in {item!r} {why}; a round can refer only to the rounds "
            f"before it ({valid}); rounds in order: {', '.join(names)}")


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


def folder_status(config: Config, folder: RunFolder) -> Status:
    """``skipped`` (a finished run), ``resumed`` (a ``last.pt``) or ``trained``."""
    if _finished(config, folder):
        return "skipped"
    return "resumed" if folder.last.is_file() else "trained"


def _finished(config: Config, folder: RunFolder) -> bool:
    """Whether ``folder`` holds a summary (written after the last step) of all the steps."""
    summary = read_summary(folder)
    try:
        n_train = summary["splits"]["train"]["count"]
        # the loop's step count: train.steps, or epochs of full batches (drop_last)
        per_epoch = n_train // min(config.data.batch_size, n_train)
        total = config.train.steps or math.ceil(float(config.train.epochs or 1) * per_epoch)
        return bool(summary["steps"] == total)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return False


def read_summary(folder: RunFolder) -> dict[str, Any]:
    try:
        summary = json.loads(folder.summary.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


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


def config_differences(config: Config, folder: RunFolder, what: str = "the round"
                       ) -> list[str]:
    """The keys (that change results) in which ``folder``'s config differs from ``config``."""
    if not folder.config.is_file():
        return []  # resuming checks the checkpoint's own config
    saved = _read_yaml(folder.config)
    # the folder records the config with model and size resolved, as training resolves it
    given, _ = resolve_for(config, None, pick_device(config.train.device))
    old, new = run_state.flatten(saved), run_state.flatten(given.to_dict())
    return [f"  {k}: the run has {old[k]!r}, {what} gives {new.get(k)!r}"
            for k in sorted(old)
            if old[k] != new.get(k) and not k.startswith(run_state.RESUMABLE_CHANGES)
            # "auto" / "native" resolve against the data, which is not read here
            and new.get(k) not in UNRESOLVED]


# --------------------------------------------------------------------------- running


def run_pipeline(pipeline: Pipeline, *, resume: bool = True,
                 callbacks: Mapping[str, Sequence[Callback]] | None = None) -> list[RoundResult]:
    """Train the pipeline's rounds in order, each through :func:`auxilia.engine.train`.

    Args:
        pipeline: the rounds and their base config.
        resume: skip the rounds whose folder holds a finished run and resume those with a
            ``last.pt``; with False, a round folder that exists is an error.
        callbacks: per round name, called as ``cb(step, losses)`` after every step.

    Returns:
        One result per round, in order (the rounds' summaries, for a table).

    Raises:
        RoundsError: a problem :func:`plan_pipeline` finds; nothing has trained then.
        KeyboardInterrupt: a round stopped on Ctrl-C or SIGTERM (after writing its
            ``last.pt``); running the pipeline again continues from there.
    """
    plans = plan_pipeline(pipeline)
    callbacks = dict(callbacks or {})
    unknown = sorted(set(callbacks) - {p.round.name for p in plans})
    if unknown:
        raise RoundsError(f"callbacks for {', '.join(unknown)}: no such round in pipeline "
                          f"{pipeline.name!r}")
    if not resume:
        _refuse_existing(pipeline.name, plans)
    results = []
    for i, plan in enumerate(plans, 1):
        if plan.config.run.progress != "off":
            print(f"round {i}/{len(plans)} {plan.round.name}: {_DOING[plan.status]} "
                  f"{plan.folder.path}", flush=True)
        results.append(_run_round(pipeline.name, plan, callbacks.get(plan.round.name, ())))
    return results


def _refuse_existing(name: str, plans: Sequence[PlannedRound]) -> None:
    existing = [str(p.folder.path) for p in plans
                if p.folder.path.is_dir() and any(p.folder.path.iterdir())]
    if existing:
        raise RoundsError(f"pipeline {name!r}: {', '.join(existing)} already exist; run it with "
                          "resume to skip finished rounds and continue the others, or delete them")


def _run_round(pipeline: str, plan: PlannedRound, callbacks: Sequence[Callback]) -> RoundResult:
    name = plan.round.name
    if plan.status == "skipped":
        return RoundResult(name, "skipped", plan.folder.path, read_summary(plan.folder))
    # a folder without any checkpoint is what a run that failed before its first one leaves
    overwrite = plan.status == "trained" and not plan.folder.best.is_file()
    try:
        result = train(plan.config, resume=plan.status == "resumed", overwrite=overwrite,
                       callbacks=callbacks)
    except KeyboardInterrupt:
        print(f"pipeline {pipeline!r} stopped in round {name!r}; run the pipeline again to "
              "continue: finished rounds are skipped, this one resumes from its last.pt",
              file=sys.stderr, flush=True)
        raise
    return RoundResult(name, plan.status, result.run_dir, result.summary, result)
