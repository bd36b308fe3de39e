"""Plain supervised training and deep supervision (Lee et al., "Deeply-Supervised Nets", 2015)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.models.heads import HeadSpec
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams
from auxilia.terms import CrossEntropy, Objective, Ref


class SupervisedParams(RecipeParams):
    """Cross-entropy on the main exit of the labeled view."""

    name: Literal["supervised"] = "supervised"
    ce_weight: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class DeepSupervisionParams(SupervisedParams):
    """Auxiliary classifiers on intermediate exits, one weight per exit.

    ``exits`` maps exit name → weight; by default every stage but the last, weight 0.3 each.
    A single auxiliary classifier on stage 3 with weight 0.7 is ``exits: {s3: 0.7}``.
    ``head_hidden`` > 0 puts a conv3x3-BN-ReLU of that width before each auxiliary pool + linear.
    """

    name: Literal["deep_supervision"] = "deep_supervision"  # type: ignore[assignment]
    exits: dict[str, float] | None = None
    head_hidden: int = Field(default=0, ge=0)


def supervised(params: SupervisedParams, ctx: RecipeContext) -> Objective:
    """CE(final logits of ``x_lb``, ``y_lb``) with ``ce_weight``."""
    main = CrossEntropy("ce", Ref("x_lb"), weight=params.ce_weight,
                        label_smoothing=params.label_smoothing)
    return Objective([main], views={"x_lb": "weak"})


def deep_supervision(params: DeepSupervisionParams, ctx: RecipeContext) -> Objective:
    """Main CE plus ``w_e · CE(aux classifier at exit e)`` for each chosen exit."""
    exits = params.exits
    if exits is None:
        exits = {stage: 0.3 for stage in ctx.stages[:-1]}
    unknown = [e for e in exits if e not in ctx.stages]
    if unknown:
        raise ValueError(f"deep_supervision.exits names {unknown}, not exits of this model; "
                         f"valid: {', '.join(ctx.stages)}")
    heads = [HeadSpec(e, "logits", "classifier", (("hidden", params.head_hidden),)) for e in exits]
    terms = [CrossEntropy(f"ce_{e}", Ref("x_lb", e), weight=w,
                          label_smoothing=params.label_smoothing) for e, w in exits.items()]
    return supervised(params, ctx) | Objective(terms, heads, {"x_lb": "weak"})


RECIPES: dict[str, Recipe[Any]] = {
    "supervised": Recipe(SupervisedParams, supervised,
                         "cross-entropy on the main exit"),
    "deep_supervision": Recipe(DeepSupervisionParams, deep_supervision,
                               "auxiliary classifiers on chosen exits, a weight per exit"),
}
