"""Recipes: short functions that build objectives. ``RECIPES`` is the registry of methods."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from auxilia.recipes import (
    contrastive,
    dense,
    distillation,
    self_distillation,
    semi,
    supervision,
)
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams
from auxilia.terms import Objective

RECIPES: dict[str, Recipe] = {**supervision.RECIPES, **contrastive.RECIPES,
                               **self_distillation.RECIPES, **distillation.RECIPES,
                               **dense.RECIPES, **semi.RECIPES}


def build_objective(methods: Sequence[RecipeParams], ctx: RecipeContext) -> Objective:
    """Build each method's objective and combine them with ``|``."""
    if not methods:
        raise ValueError("no method given; valid: " + ", ".join(sorted(RECIPES)))
    parts = [RECIPES[m.name].build(m, ctx) for m in methods]
    return reduce(lambda a, b: a | b, parts)


__all__ = ["RECIPES", "Recipe", "RecipeContext", "RecipeParams", "build_objective"]
