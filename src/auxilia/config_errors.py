"""Pydantic's validation errors as one line each: the dotted key, the problem and the fix."""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError

__all__ = ["describe", "suggest"]


def suggest(name: str, valid: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """Turn pydantic's errors into one line each: path, problem, and the fix."""
    lines = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        path = _dotted(e["loc"])
        if e["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1])
            hint = suggest(loc[-1], valid)
            lines.append(f"{path}: unknown key{hint}; valid keys here: {', '.join(valid)}")
        elif e["type"] == "value_error":
            lines.append(f"{path or 'config'}: {e['msg'].removeprefix('Value error, ')}")
        else:
            expected = _expected(root, loc)
            got = e.get("input")
            lines.append(f"{path}: {e['msg']}" + (f" (expected {expected}" if expected else " (")
                         + f"{', ' if expected else ''}got {got!r})")
    return lines


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
        model = next((a for a in getattr(model, "__args__", ()) if isinstance(a, type)
                      and issubclass(a, BaseModel)), model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _fields_at(root: type[BaseModel], loc: list[str]) -> list[str]:
    model = _model_at(root, loc)
    return sorted(model.model_fields) if model else []


def _expected(root: type[BaseModel], loc: list[str]) -> str:
    parent = _model_at(root, loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return ""
    field = parent.model_fields[loc[-1]]
    ann = field.annotation
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(ann))
    name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
    return name + _bounds(field.metadata)


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
