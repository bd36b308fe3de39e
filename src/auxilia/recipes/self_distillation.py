"""Self-distillation: the network teaches itself (BYOT, DDGSD, PS-KD)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.models.heads import HeadSpec, downsample_steps
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams, ce_terms, check_exits
from auxilia.terms import (
    CrossEntropy,
    Discrepancy,
    FeatureL2,
    KLDistill,
    Objective,
    PredictionBankCE,
    Ref,
    Term,
)


class BYOTParams(RecipeParams):
    """Be Your Own Teacher (Zhang et al., ICCV 2019).

    loss = ce_weight·Σ_exits CE + kd_weight·T²·Σ KL(exit ‖ deepest, detached)
    + hint_weight·Σ ‖hint(exit) − feat(deepest)‖². The paper's α = 0.1, β = 1e-6, T = 3 give
    ce_weight = 1 − α = 0.9, kd_weight = α = 0.1, hint_weight = β.
    """

    name: Literal["byot"] = "byot"
    exits: list[str] | None = None
    ce_weight: float = Field(default=0.9, ge=0)
    kd_weight: float = Field(default=0.1, ge=0)
    hint_weight: float = Field(default=1e-6, ge=0)
    temperature: float = Field(default=3.0, gt=0)


def byot(params: BYOTParams, ctx: RecipeContext) -> Objective:
    """Shallow bottleneck classifiers on every stage but the last, taught by the final exit."""
    exits = params.exits if params.exits is not None else list(ctx.stages[:-1])
    check_exits("byot", exits, ctx, final_ok=False)
    last = ctx.stages[-1]
    heads = []
    for e in exits:
        steps = downsample_steps(ctx.stage_strides[e], ctx.stage_strides[last])
        heads.append(HeadSpec(e, "logits", "byot", (("out_channels", ctx.stage_channels[last]),
                                                     ("downsample", steps))))
    terms: list[Term] = list(ce_terms(params.ce_weight, ("x_lb",)))
    for e in exits:
        if params.ce_weight:
            terms.append(CrossEntropy(f"ce_{e}", Ref("x_lb", e), weight=params.ce_weight))
        if params.kd_weight:
            terms.append(KLDistill(f"kd_{e}", Ref("x_lb", e), Ref("x_lb"), params.temperature,
                                   weight=params.kd_weight))
        if params.hint_weight:
            terms.append(FeatureL2(f"hint_{e}", Ref("x_lb", e, "hint"),
                                   Ref("x_lb", "final", "feat"), weight=params.hint_weight))
    return Objective(terms, heads, {"x_lb": "weak"})


class DDGSDParams(RecipeParams):
    """Data-distortion guided self-distillation (Xu & Liu, AAAI 2019): two distortions of the
    same batch; CE on both, symmetric KL between their predictions, and a discrepancy between
    their final features (Gaussian MMD, or a public code's mean difference with weight 5e-4)."""

    name: Literal["ddgsd"] = "ddgsd"
    ce_weight: float = Field(default=1.0, ge=0)
    kd_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=1.0, gt=0)
    feat_weight: float = Field(default=5e-4, ge=0)
    discrepancy: Literal["mmd", "mean_difference"] = "mean_difference"


def ddgsd(params: DDGSDParams, ctx: RecipeContext) -> Objective:
    """CE(view 1) + CE(view 2) + KL(1‖2) + KL(2‖1) + feat_weight·D(feat 1, feat 2)."""
    terms: list[Term] = list(ce_terms(params.ce_weight, ("x_lb", "x_lb2")))
    if params.kd_weight:
        terms += [KLDistill("kd_12", Ref("x_lb"), Ref("x_lb2"), params.temperature,
                            weight=params.kd_weight),
                  KLDistill("kd_21", Ref("x_lb2"), Ref("x_lb"), params.temperature,
                            weight=params.kd_weight)]
    if params.feat_weight:
        terms.append(Discrepancy("feat_discrepancy", Ref("x_lb", "final", "feat"),
                                 Ref("x_lb2", "final", "feat"), params.discrepancy,
                                 weight=params.feat_weight))
    return Objective(terms, views={"x_lb": "weak", "x_lb2": "weak"})


class PSKDParams(RecipeParams):
    """Progressive self-knowledge distillation (Kim et al., ICCV 2021): cross-entropy against
    (1 − α_t)·one-hot + α_t·(the sample's prediction from the previous epoch),
    α_t = alpha_max·(epoch + 1)/epochs. Replaces the plain CE of the main exit."""

    name: Literal["ps_kd"] = "ps_kd"
    alpha_max: float = Field(default=0.8, ge=0, le=1)
    weight: float = Field(default=1.0, gt=0)


def ps_kd(params: PSKDParams, ctx: RecipeContext) -> Objective:
    if ctx.num_train <= 0:
        raise ValueError("ps_kd needs the number of training samples for its prediction bank")
    term = PredictionBankCE("ps_kd", Ref("x_lb"), ctx.num_train, ctx.num_classes,
                            params.alpha_max, weight=params.weight)
    return Objective([term], views={"x_lb": "weak"})


RECIPES: dict[str, Recipe[Any]] = {
    "byot": Recipe(BYOTParams, byot,
                   "be your own teacher: bottleneck classifiers taught by the deepest exit"),
    "ddgsd": Recipe(DDGSDParams, ddgsd,
                    "two distortions teach each other: CE, symmetric KL, feature discrepancy"),
    "ps_kd": Recipe(PSKDParams, ps_kd,
                    "progressive self-distillation from each sample's last prediction"),
}
