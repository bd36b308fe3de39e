"""A pipeline's file and the rounds it names (see :mod:`auxilia.engine.rounds`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from auxilia.config import Config
from auxilia.config import read_yaml as _read_yaml
from auxilia.config_errors import describe, repeated_in, suggest
from auxilia.engine.labelling import LabelSettings
from auxilia.engine.round_refs import RoundsError, check_names
from auxilia.paths import beside, regular_file
from auxilia.strict import Strict

__all__ = ["Pipeline", "Round", "load_pipeline"]


@dataclass(frozen=True)
class Round:
    """One round of a pipeline: its name (also its folder's), its overrides and its kind:
    ``train`` (an ordinary run) or ``label`` (a teacher labels the unlabeled images,
    :mod:`auxilia.engine.labelling`, with ``label``'s settings)."""

    name: str
    overrides: tuple[str, ...] = ()
    kind: Literal["train", "label"] = "train"
    label: LabelSettings | None = None

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

class _RoundFile(Strict):
    name: str
    kind: Literal["train", "label"] = "train"
    overrides: list[str] = Field(default_factory=list)
    label: LabelSettings | None = Field(default=None, description="a label round's settings")


class _PipelineFile(Strict):
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
    if "variants" in raw and "rounds" not in raw:
        raise RoundsError(f"{path} is a sweep file (it has variants), not a pipeline file: run "
                          f"it with auxilia compare {path}")
    if "rounds" not in raw and set(raw) & set(Config.model_fields):
        raise RoundsError(f"{path} is a training config, not a pipeline file (it has no "
                          f"rounds): train it with auxilia train {path}")
    try:
        spec = _PipelineFile.model_validate(raw)
    except ValidationError as err:
        raise RoundsError(f"{path}: invalid pipeline:\n  "
                          + "\n  ".join(_describe_file(err))) from None
    base = beside(path, spec.base)
    repeated = repeated_in([("overrides", spec.overrides),
                            *((f"round {r.name!r} overrides", r.overrides) for r in spec.rounds)])
    if repeated:
        raise RoundsError(f"{path}: {repeated}")
    rounds = tuple(_round(r, overrides) for r in spec.rounds)
    pipeline = Pipeline(spec.name, base, rounds, tuple(spec.overrides))
    check_names(pipeline.name, [r.name for r in pipeline.rounds])
    return pipeline


def _round(spec: _RoundFile, overrides: Sequence[str]) -> Round:
    if spec.label is not None and spec.kind != "label":
        raise RoundsError(f"round {spec.name!r} has label: settings and is not a label round: "
                          "add kind: label, or remove label:")
    label = (spec.label or LabelSettings()) if spec.kind == "label" else None
    return Round(spec.name, (*spec.overrides, *overrides), spec.kind, label)


def _describe_file(err: ValidationError) -> list[str]:
    """One line per problem (:func:`describe`'s), a round's unknown key with a suggestion.

    Not zipped with ``err.errors()``: a union's failure (``label.per_class``) is several errors
    and one line."""
    valid = list(_RoundFile.model_fields)
    lines = []
    for line in describe(err, _PipelineFile):
        unknown = re.match(r"rounds\[(\d+)\]\.(\w+): unknown key", line)
        if unknown:
            index, key = unknown.groups()
            line = (f"rounds[{index}].{key}: unknown key{suggest(key, valid)}; valid keys "
                    f"here: {', '.join(valid)}")
        lines.append(line)
    return lines
