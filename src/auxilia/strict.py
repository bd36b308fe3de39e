"""The base of every typed config section (data, model, methods, ...)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values validated on assignment,
    floats finite (an ``inf`` or ``nan`` from YAML's ``.inf``/``.nan`` is refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
