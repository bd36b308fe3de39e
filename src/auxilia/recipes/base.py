"""What a recipe is: a typed parameter block and a function that builds an objective."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from auxilia.data.config import Strict
from auxilia.terms import Objective


class RecipeParams(Strict):
    """Parameters of one method in ``method: [...]``; subclasses fix ``name`` and add fields."""

    name: str


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may know of the run when it builds its objective."""

    stages: tuple[str, ...]
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    num_classes: int
    num_train: int = 0  # labeled training samples: the size of per-sample banks


@dataclass(frozen=True)
class Recipe:
    """A registered method: its parameter model, its builder and a one-line summary."""

    params: type[RecipeParams]
    build: Callable[[RecipeParams, RecipeContext], Objective]
    summary: str
