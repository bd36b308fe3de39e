"""The base of every typed config section (data, model, methods, ...).

:class:`Strict` is defined last: building it runs :func:`refuse_bools`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler
from pydantic_core import CoreSchema, PydanticKnownError
from pydantic_core import core_schema as cs


def _refuse_bool_int(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticKnownError("int_type")
    return value


def _refuse_bool_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticKnownError("float_type")
    return value


def _refuse_bool_literal(expected: list[Any]) -> Any:
    """The check for a literal of numbers (``Literal[1, 2]``, which takes ``True`` as 1)."""
    words = ", ".join(repr(x) for x in expected)

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticKnownError("literal_error", {"expected": words})
        return value

    check.refuses_bools = True  # type: ignore[attr-defined]
    return check


_CHECKS = {"int": _refuse_bool_int, "float": _refuse_bool_float}
_NOT_VALIDATION = ("serialization", "metadata")
"""Parts of a core schema that never validate input: left as they are."""


def refuse_bools(schema: Any) -> Any:
    """``schema`` with every int, float and numeric-literal check refusing a bool first.

    Args:
        schema: a pydantic core schema (or any part of one).

    Returns:
        A copy in which each such check is wrapped in a before-validator raising pydantic's own
        error (``int_type``, ``float_type``, ``literal_error``) at the value's own location.
    """
    if isinstance(schema, list):
        return [refuse_bools(x) for x in schema]
    if not isinstance(schema, dict) or _is_wrapped(schema):
        return schema
    out = {k: v if k in _NOT_VALIDATION else refuse_bools(v) for k, v in schema.items()}
    kind = schema.get("type")
    if kind in _CHECKS:
        return cs.no_info_before_validator_function(_CHECKS[kind], out)
    expected = schema.get("expected") if kind == "literal" else None
    if expected and any(isinstance(x, int | float) for x in expected) and not any(
            isinstance(x, bool) for x in expected):
        return cs.no_info_before_validator_function(_refuse_bool_literal(expected), out)
    return out


def _is_wrapped(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` is one of :func:`refuse_bools`' wrappers (a nested section's)."""
    function = (schema.get("function") or {}).get("function") if schema.get(
        "type") == "function-before" else None
    return function in _CHECKS.values() or getattr(function, "refuses_bools", False)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values validated on assignment,
    floats finite (an ``inf`` or ``nan`` from YAML's ``.inf``/``.nan`` is refused), and a bool
    is never a number: ``data.batch_size=true`` is refused, not read as 1 (pydantic's lax mode
    would take it). Keys whose type accepts a bool (``bool``, ``Any``, a bare ``dict``, a union
    with ``bool``) still take one."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> CoreSchema:
        return refuse_bools(handler(source))
