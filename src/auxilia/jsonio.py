"""Strict JSON for every file auxilia writes: a non-finite number becomes ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON: ``jq``,
JavaScript's ``JSON.parse`` and most other readers refuse the whole file. A NaN loss or an
infinite metric must not make ``metrics.jsonl``, ``summary.json`` or an export's ``model.json``
unreadable, so :func:`dumps` writes them as ``null`` (the value is unknown) and then serialises
with ``allow_nan=False``, so that nothing non-finite can slip through.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float, at any depth, replaced by ``None``.

    Dicts keep their keys; lists and tuples become lists; NumPy scalars and 0-d arrays or
    tensors (anything with ``ndim == 0`` and ``item()``) become Python numbers first.
    Other values are returned unchanged (``json`` refuses those it cannot write).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(value) for value in obj]
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        return finite(obj.item())  # numpy.float32(nan), torch.tensor(inf), ...
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: non-finite numbers written as ``null``.

    Raises:
        TypeError: ``obj`` holds a value JSON cannot represent (named by ``json``).
    """
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def loads(text: str) -> Any:
    """Parse strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` are refused.

    Raises:
        ValueError: ``text`` is not strict JSON.
    """
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
