"""Recipes: short functions that build objectives. ``RECIPES`` is the registry of methods."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any

from auxilia.parts import STUDENT
from auxilia.recipes import (
    contrastive,
    dense,
    distillation,
    meta_pseudo_labels,
    noisy_student,
    self_distillation,
    semi,
    supervision,
)
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams
from auxilia.terms import Objective

RECIPES: dict[str, Recipe[Any]] = {**supervision.RECIPES, **contrastive.RECIPES,
                               **self_distillation.RECIPES, **distillation.RECIPES,
                               **dense.RECIPES, **semi.RECIPES, **noisy_student.RECIPES,
                               **meta_pseudo_labels.RECIPES}


def build_objective(methods: Sequence[RecipeParams], ctx: RecipeContext) -> Objective:
    """Build each method's objective and combine them with ``|``."""
    if not methods:
        raise ValueError("no method given; valid: " + ", ".join(sorted(RECIPES)))
    parts = [RECIPES[m.name].build(m, ctx) for m in methods]
    return reduce(lambda a, b: a | b, parts)


def deploy_reason(methods: Sequence[RecipeParams], deployed: str) -> str:
    """Why ``deployed`` (the objective's deployed slot) is the run's model, in one sentence.

    Args:
        methods: the run's methods (``config.method``).
        deployed: the slot deployed (``Objective.deployed``: ``student``, ``ema``, ...).

    Returns:
        The first reason a method gives (:meth:`RecipeParams.deploy_reason`), else
        ``"the student is deployed"`` (or ``"<slot> is deployed"``).
    """
    for method in methods:
        reason = method.deploy_reason(deployed)
        if reason:
            return reason
    return "the student is deployed" if deployed == STUDENT else f"{deployed} is deployed"


__all__ = ["RECIPES", "Recipe", "RecipeContext", "RecipeParams", "build_objective",
           "deploy_reason"]
