"""Names and references of a pipeline's rounds: ``{round}`` in an override's value expands to
that earlier round's run folder."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from auxilia.config import ConfigError, check_run_name

__all__ = ["NAME", "REFERENCE", "RoundsError", "check_names", "expand"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""A round's name: also what ``{name}`` may hold, so that a YAML flow mapping such as
``{s1: 0.3}`` in an override's value is never taken for a reference."""
REFERENCE = re.compile(r"\{(" + NAME.pattern + r")\}")



class RoundsError(ConfigError):
    """A pipeline problem found before training: the message names the round and the fix."""



def check_names(pipeline: str, rounds: Sequence[str]) -> None:
    """Refuse a pipeline or round name that is not a plain folder name, or used twice."""
    _plain(pipeline, "pipeline name")
    if not rounds:
        raise RoundsError(f"pipeline {pipeline!r} has no rounds; list at least one")
    seen: set[str] = set()
    for name in rounds:
        _plain(name, "round name")
        if not NAME.fullmatch(name):
            raise RoundsError(f"round name {name!r}: use letters, digits and . _ + - only "
                              "(starting with a letter or digit), so that {name} refers to it")
        if name in seen:
            raise RoundsError(f"round name {name!r} is used twice; round names are their "
                              "run folders' names and must differ")
        seen.add(name)


def _plain(name: str, what: str) -> None:
    try:
        check_run_name(name)
    except ValueError as err:
        raise RoundsError(str(err).replace("run.name", what, 1)) from None


def expand(rnd: str, items: Sequence[str], folders: Mapping[str, Path],
            names: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """``items`` with every ``{round}`` in a value replaced by that round's folder."""
    uses: list[str] = []

    def folder_of(match: re.Match[str], item: str) -> str:
        ref = match.group(1)
        if ref not in folders:
            raise RoundsError(_bad_reference(rnd, ref, item, list(folders), names))
        uses.append(ref)
        return str(folders[ref])

    expanded = []
    for item in items:
        key, sep, value = item.partition("=")
        if key.strip() == "run.name":
            raise RoundsError(f"round {rnd!r}: {item!r}: the round's name is its run.name; "
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
