"""Methods' own defaults: the optimizer and schedule a recipe's paper trains with.

A recipe declares them (:attr:`auxilia.recipes.Recipe.defaults`, dotted keys such as
``optim.lr``). They apply to every key **the user did not set**, and to no other: a key is set
when the YAML file, an override, a sweep's or pipeline's overrides, or the Python API's dict,
keyword or :class:`~auxilia.config.Config` constructor gave it. Which keys were set is read
from pydantic's ``model_fields_set`` of each section (:func:`user_set_keys`), and the defaults
are applied when a :class:`~auxilia.config.Config` is validated, so every path (``load_config``,
``parse_config``, sweeps, rounds, ``auxilia.train``, a Config built in Python) decides alike.
A key given a method's default is not marked as set: the config's user settings
(:func:`user_settings`) are what the user wrote, and re-validating applies the same defaults.
A config re-read from a run folder's ``config.yaml`` sets every key, so nothing is re-applied.

This module sits beside the config (it imports recipes, never :mod:`auxilia.config`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from auxilia.recipes import RECIPES, RecipeParams

__all__ = ["SECTIONS", "applied_method_defaults", "apply_method_defaults", "canonical",
           "declared_defaults", "user_set_keys", "user_settings"]

SECTIONS = ("optim", "schedule")
"""The config sections a method may declare defaults in."""


def declared_defaults(methods: Sequence[RecipeParams]) -> tuple[dict[str, Any],
                                                                dict[str, list[str]]]:
    """The defaults the configured methods declare, and the keys on which they disagree.

    Args:
        methods: the config's methods.

    Returns:
        ``(values, conflicts)``: each agreed key's value, and for each key two methods declare
        differently, the names of the methods declaring it (in order).
    """
    values: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    conflicts: dict[str, list[str]] = {}
    for method in methods:
        for key, value in RECIPES[method.name].defaults.items():
            if key in values and values[key] != value:
                conflicts[key] = owners[key] + [method.name]
            values.setdefault(key, value)
            owners.setdefault(key, []).append(method.name)
    return {k: v for k, v in values.items() if k not in conflicts}, conflicts


def user_set_keys(config: Any) -> set[str]:
    """The dotted keys of :data:`SECTIONS` the user set (``optim.lr``, ``schedule.name``...).

    Args:
        config: a :class:`~auxilia.config.Config`.
    """
    return {f"{section}.{key}" for section in SECTIONS
            for key in getattr(config, section).model_fields_set}


def apply_method_defaults(config: Any) -> None:
    """Give every key of :data:`SECTIONS` the user did not set its methods' default, or the
    section's own default when no method declares one (a method list changed by assignment).

    Called by the config's validation; the keys given stay unset in ``model_fields_set``.

    Raises:
        ValueError: two methods declare different values for a key the user did not set
            (one line naming both methods, the key and how to set it).
    """
    methods = config.method
    values, conflicts = declared_defaults(methods)
    given = user_set_keys(config)
    open_conflicts = {k: v for k, v in conflicts.items() if k not in given}
    if open_conflicts:
        raise ValueError(_conflict_message(methods, open_conflicts))
    for section in SECTIONS:
        current = getattr(config, section)
        unset = set(type(current).model_fields) - current.model_fields_set
        wanted = {key: values.get(f"{section}.{key}", _field_default(current, key))
                  for key in unset}
        changed = {k: v for k, v in wanted.items() if _json(getattr(current, k)) != _json(v)}
        if changed:  # a copy: a section object the caller passed in is left as it was
            fresh = type(current).model_validate({**current.model_dump(), **changed})
            object.__setattr__(fresh, "__pydantic_fields_set__", set(current.model_fields_set))
            setattr(config, section, fresh)


def applied_method_defaults(config: Any) -> list[str]:
    """The line saying which methods' defaults this config took, for the run's start header;
    empty when none changed a value.

    Only keys whose value differs from the section's own default are named, e.g.
    ``method defaults: fixmatch sets optim.lr=0.03, optim.nesterov=true,
    schedule.name=fixmatch_cosine (set a key to choose otherwise)``. A config re-read from a
    run folder's ``config.yaml`` sets every key, so it names none.

    Args:
        config: a validated :class:`~auxilia.config.Config`.
    """
    methods = config.method
    values, _ = declared_defaults(methods)
    given = user_set_keys(config)
    shown = []
    for key, value in values.items():
        section, field = key.split(".", 1)
        if key not in given and _json(value) != _json(
                _field_default(getattr(config, section), field)):
            shown.append(f"{key}={_show(value)}")
    if not shown:
        return []
    names = [m.name for m in methods if any(k in RECIPES[m.name].defaults for k in values)]
    who = " and ".join(dict.fromkeys(names))
    verb = "sets" if len(set(names)) == 1 else "set"
    return [f"method defaults: {who} {verb} {', '.join(shown)} (set a key to choose otherwise)"]


def user_settings(config: Any) -> dict[str, Any]:
    """The settings the user gave ``config`` (every key of a config read from a run folder),
    as a raw dict that :func:`auxilia.config.parse_config` turns back into the same config.

    What a sweep or pipeline with a :class:`~auxilia.config.Config` as its base, or
    ``auxilia.train(config, **overrides)``, starts from, so that a method a variant adds
    brings its own defaults where the user set nothing.
    """
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["method"] = [{"name": m.name, **m.model_dump(mode="json", exclude_unset=True)}
                     for m in config.method]
    return raw


def _conflict_message(methods: Sequence[RecipeParams], conflicts: dict[str, list[str]]) -> str:
    """One line: which methods disagree on which keys, and the setting that settles it."""
    parts, fixes = [], []
    for key, names in conflicts.items():
        shown = [_show(RECIPES[n].defaults[key]) for n in names]
        parts.append(f"{key} ({', '.join(f'{n}: {v}' for n, v in zip(names, shown, strict=True))})")
        fixes.append(f"{key}={shown[0]}")
    names = list(dict.fromkeys(n for ns in conflicts.values() for n in ns))
    return (f"methods {' and '.join(names)} declare different defaults for "
            f"{'; '.join(parts)}: set {' '.join(fixes)} (or the value you want) to choose")


def _field_default(section: BaseModel, key: str) -> Any:
    return type(section).model_fields[key].get_default(call_default_factory=True)


def _json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, default=str)


def canonical(value: Any) -> Any:
    """``value`` in a form where equal settings are equal: a tuple as a list, a whole float as
    an int (``30`` and ``30.0`` epochs are one setting)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    """A value as it is written in YAML or an override (``true``, ``0.03``, ``[0.9, 0.99]``)."""
    return value if isinstance(value, str) else json.dumps(value)
