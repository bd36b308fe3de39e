"""The error every data problem raises (a leaf module: the stores and the sources use it)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(Exception):
    """The data cannot be loaded as configured; the message says what to change."""
