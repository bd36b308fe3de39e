"""Pydantic's validation errors as one line each, in the config's words: key, problem, fix.

``data.batch_size=0`` reads ``data.batch_size: must be at least 1 (expected int >= 1, got 0)``,
never pydantic's ``Input should be greater than or equal to 1``, its error types or its URLs.
A union (``data.image_size``: an int, ``auto``, ``native`` or null) gives one line, not one per
member; pydantic's names of the members (``constrained-int``, ``literal[...]``) never show.
"""

from __future__ import annotations

import difflib
import math
import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "describe", "repeated_override", "suggest"]


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and the fix.

    Defined here, below every config section (``auxilia.teachers`` raises it too), and
    re-exported by :mod:`auxilia.config`.
    """

_PROBLEMS: dict[str, str] = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "finite_number": "must be a finite number, not .inf or .nan",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "is too large a number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} character(s)",
    "list_type": "must be a list, such as [a, b]",
    "tuple_type": "must be a list, such as [a, b]",
    "set_type": "must be a list, such as [a, b]",
    "dict_type": "must be a mapping, such as {{key: value}}",
    "model_type": "must be a mapping of this section's keys",
    "model_attributes_type": "must be a mapping of this section's keys",
    "too_short": "must hold at least {min_length} item(s), not {actual_length}",
    "too_long": "must hold at most {max_length} item(s), not {actual_length}",
    "missing": "is required",
    "none_required": "must be null",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
}
"""What each common pydantic error type means, in the config's words (``ctx`` fills ``{}``)."""

_VALUE_PROBLEMS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                   "multiple_of", "finite_number", "too_short", "too_long", "string_too_short",
                   "string_too_long", "int_parsing_size", "value_error"}
"""Errors that mean the value had the right type: in a union, the member that speaks."""


def suggest(name: str, valid: Any) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """Turn pydantic's errors into one line each: path, problem, and the fix.

    Args:
        err: the error of validating a mapping into ``root``.
        root: the model validated (``Config``, or a method's parameters).

    Returns:
        One line per key (the errors of a union's members are merged into one).
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    fields: dict[tuple[Any, ...], _Field] = {}
    for e in err.errors():
        field = _walk(root, e["loc"], e["type"])
        groups.setdefault(field.loc, []).append(e)
        fields[field.loc] = field
    return [_line(fields[loc], errors, root) for loc, errors in groups.items()]


class _Field:
    """Where an error is: the key without union-member tags, its annotation and bounds."""

    def __init__(self, loc: tuple[Any, ...], annotation: Any, metadata: list[Any]) -> None:
        self.loc, self.annotation, self.metadata = loc, annotation, metadata

    @property
    def path(self) -> str:
        out = ""
        for x in self.loc:
            out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
        return out or "config"


def _walk(root: type[BaseModel], loc: tuple[Any, ...], kind: str) -> _Field:
    """Follow ``loc`` through the models, dropping pydantic's names of union members."""
    nav: Any = root  # what the next part is looked up in: a tag narrows it to one member
    kept: list[Any] = []
    ann: Any = root  # the annotation of the key named by ``kept`` (the whole union)
    metadata: list[Any] = []
    for part in loc:
        members = _members(nav)
        model = next((m for m in members if _is_model(m) and part in m.model_fields), None)
        if model is not None:
            field = model.model_fields[part]
            kept.append(part)
            nav = ann = field.annotation
            metadata = list(field.metadata)
        elif isinstance(part, str) and len(members) > 1:  # a member's tag, e.g. constrained-int
            nav = _member_named(part, members)
        else:  # a list index or a mapping key (or an unknown key: extra_forbidden)
            kept.append(part)
            nav = ann = _item(members, part)
            metadata = []
    if kind == "missing" and kept and isinstance(kept[-1], int):
        # a list of fixed length (optim.betas) missing an item: the list is what is wrong
        return _walk(root, tuple(kept[:-1]), "")
    return _Field(tuple(kept), ann, metadata)


def _members(ann: Any) -> list[Any]:
    """The members of a union without None (``[ann]`` for anything else)."""
    if get_origin(ann) in (Union, types.UnionType):
        return [a for a in get_args(ann) if a is not type(None)]
    return [ann]


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _base(ann: Any) -> Any:
    """``int`` for ``Annotated[int, ...]``; the annotation itself otherwise."""
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def _member_named(tag: str, members: list[Any]) -> Any:
    """The union member pydantic's ``tag`` names (``constrained-int``, ``literal[...]``)."""
    for m in members:
        base = _base(m)
        name = "literal" if get_origin(base) is Literal else getattr(
            get_origin(base) or base, "__name__", "")
        if name and (tag == name or tag.startswith(f"{name}[") or tag.endswith(f"-{name}")):
            return m
    return None


def _item(members: list[Any], part: Any) -> Any:
    """The annotation of an item of a list, tuple or mapping among ``members``, or None."""
    for m in members:
        origin, args = get_origin(m), get_args(m)
        if origin in (list, set, frozenset) and args:
            return args[0]
        if origin is tuple and args:
            return args[0] if args[-1] is Ellipsis or not isinstance(part, int) else (
                args[part] if part < len(args) else None)
        if origin is dict and len(args) == 2:
            return args[1]
    return None


def _line(field: _Field, errors: list[dict[str, Any]], root: type[BaseModel]) -> str:
    """One line for the errors of one key (several when its annotation is a union)."""
    e = next((x for x in errors if x["type"] in _VALUE_PROBLEMS), errors[0])
    path, got = field.path, e.get("input")
    if e["type"] == "extra_forbidden":
        model = _model_at(root, field.loc[:-1])
        valid = sorted(model.model_fields) if model else []
        return (f"{path}: unknown key{suggest(field.loc[-1], valid)}; valid keys here: "
                f"{', '.join(valid)}")
    if e["type"] in ("value_error", "assertion_error"):  # our validators' own messages
        message = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{path}: {message}"
    expected = _expected(field.annotation, field.metadata)
    problem = _problem_of(e, field, expected, union=len(errors) > 1)
    if e["type"] == "missing" and problem == _PROBLEMS["missing"]:  # its input is the parent
        return f"{path}: {problem}" + (f" (expected {expected})" if expected else "")
    shown = "" if not expected or expected in problem else f"expected {expected}, "
    return f"{path}: {problem} ({shown}got {_shown(got)}){_hint(field.annotation, got)}"


def _problem_of(e: dict[str, Any], field: _Field, expected: str, union: bool) -> str:
    """What is wrong with the key's value: the expectation itself when that says it best."""
    no_member_took_it = union and e["type"] not in _VALUE_PROBLEMS
    retell = ("literal_error", "enum", "model_type", "model_attributes_type")
    if expected and (no_member_took_it or e["type"] in retell):
        return f"must be {expected}"
    if e["type"] == "missing" and isinstance(e["loc"][-1], int):  # a fixed-length list
        return f"must hold {len(get_args(field.annotation))} values"
    return _problem(e)


def _problem(e: dict[str, Any]) -> str:
    """The problem of one error in the config's words; pydantic's message only as a fallback."""
    template = _PROBLEMS.get(e["type"])
    if template is not None:
        try:
            return template.format(**{k: _number(v) for k, v in (e.get("ctx") or {}).items()})
        except (KeyError, IndexError, ValueError):
            pass  # a context pydantic did not give: its own message, reworded
    return str(e["msg"]).replace("Input should be", "must be").removeprefix("Value error, ")


def _hint(ann: Any, got: Any) -> str:
    """``; did you mean 'adamw'?`` when a string is close to one of the allowed words."""
    words = [w for m in _members(ann) if get_origin(_base(m)) is Literal
             for w in get_args(_base(m))]
    close = suggest(got, words) if isinstance(got, str) and words else ""
    return f"; {close.strip()[1:-1]}" if close else ""


def _shown(value: Any) -> str:
    """A value as YAML spells it (``null``, ``true``), strings quoted, at most 60 characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> Any:
    """``0`` for the ``0.0`` pydantic gives as the bound of a float field; anything else as is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model (section) at ``loc``, also inside lists and mappings, or None."""
    ann = _walk(root, loc, "").annotation if loc else root
    return next((m for m in _members(ann) if _is_model(m)), None)


def _expected(ann: Any, metadata: list[Any]) -> str:
    """What a key takes, in the config's words: ``int >= 4, 'auto', 'native' or null``."""
    if ann is None:
        return ""
    members = _members(ann)
    parts = [_type_text(m, metadata) for m in members]
    if type(None) in get_args(ann):
        parts.append("null")
    parts = [p for p in parts if p]
    if len(parts) == 1 and get_origin(_base(members[0])) is Literal:
        return "one of " + parts[0]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _type_text(ann: Any, metadata: list[Any]) -> str:
    """One member's description: ``int >= 1``, ``'sgd', 'adamw'``, ``list of float``, ..."""
    if get_origin(ann) is Annotated:
        inner, *extra = get_args(ann)
        bounds = [m for x in extra for m in (getattr(x, "metadata", None) or [x])]
        return _type_text(inner, [*metadata, *bounds])
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return ", ".join(repr(a) for a in args)
    if origin in (list, set, frozenset):
        if args and _is_model(args[0]):
            return f"list of mappings with the keys {_keys(args[0])}"
        return "list" + (f" of {_type_text(args[0], [])}" if args else "")
    if origin is tuple:
        if args and args[-1] is not Ellipsis:
            return f"list of {len(args)} values [{', '.join(_type_text(a, []) for a in args)}]"
        return "list"
    if origin is dict or ann is dict:
        return "mapping"
    if _is_model(ann):
        return f"a mapping of its keys: {_keys(ann)}"
    names = {int: "int", float: "float", bool: "true or false", str: "string"}
    if ann in names:
        return names[ann] + _bounds(metadata)
    return "" if ann is Any else getattr(ann, "__name__", str(ann).replace("typing.", ""))


def _keys(model: type[BaseModel]) -> str:
    """The first keys of a section: ``augment, batch_size, csv, download, ...``."""
    keys = sorted(model.model_fields)
    return ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")


def _bounds(metadata: list[Any]) -> str:
    """A field's numeric bounds as text: `` in [0, 4294967295]``, `` > 0``, or ``""``."""
    low = next((("[", m.ge) if isinstance(m, at.Ge) else ("(", m.gt) for m in metadata
                if isinstance(m, at.Ge | at.Gt)), None)
    high = next(((m.le, "]") if isinstance(m, at.Le) else (m.lt, ")") for m in metadata
                 if isinstance(m, at.Le | at.Lt)), None)
    if low and high:
        return f" in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f" {'<=' if high[1] == ']' else '<'} {high[0]}"
    return ""


def repeated_override(items: list[str]) -> str | None:
    """``KEY is set twice ('a', then 'b'); keep one`` for the first key two items of one list
    set (the last would win without a word), else None."""
    first: dict[str, str] = {}
    for item in items:
        key = item.partition("=")[0].strip()
        if key in first:
            return f"{key} is set twice ({first[key]!r}, then {item!r}); keep one"
        first[key] = item
    return None


def repeated_in(groups: Iterable[tuple[str, list[str]]]) -> str | None:
    """``<where>: <what repeated_override says>`` for the first ``(where, overrides)`` group
    that sets a key twice (a sweep's or a pipeline's overrides and each variant's or round's),
    else None."""
    for where, items in groups:
        repeated = repeated_override(items)
        if repeated:
            return f"{where}: {repeated}"
    return None
