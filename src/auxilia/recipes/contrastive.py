"""Contrastive deep supervision (Zhang et al., ECCV 2022) and deep metric learning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.models.heads import HeadSpec, sepconv_layout
from auxilia.parts import StreamSpec
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams, ce_terms, check_exits
from auxilia.terms import CrossEntropy, Objective, Ref, SupCon, Term, Triplet


class CDSParams(RecipeParams):
    """Contrastive learning on projection heads at chosen exits, plus cross-entropy.

    Defaults are the paper's CIFAR recipe: a SepConv projection head on every stage (the last
    included), SupCon with labels at τ = 0.07 and weight 0.1 per head, CE on the first view,
    view 1 = crop + flip + Cutout, view 2 = crop + flip + colour jitter + grayscale.
    """

    name: Literal["cds"] = "cds"
    exits: list[str] | None = None
    weight: float = Field(default=0.1, ge=0)
    temperature: float = Field(default=0.07, gt=0)
    base_temperature: float = Field(default=0.07, gt=0)
    supervised: bool = Field(default=True, description="SupCon with labels; false: SimCLR")
    ce_weight: float = Field(default=1.0, ge=0)
    ce_views: Literal["first", "both"] = "first"
    head: Literal["sepconv", "mlp"] = "sepconv"
    proj_dim: int = Field(default=128, gt=0, description="output size of the mlp head")
    unlabeled: bool = Field(default=False,
                            description="also SimCLR on two views of unlabeled images")
    unlabeled_weight: float | None = Field(default=None, ge=0, description="default: weight")
    mu: float | None = Field(default=None, gt=0,
                             description="unlabeled per labeled sample; default 1, yielding")


def projection_head(exit_name: str, kind: str, ctx: RecipeContext, proj_dim: int) -> HeadSpec:
    """A ``proj`` head on ``exit_name``: CDS's SepConv layout derived from the exit's channels
    and stride (to the last stage's channels and resolution), or an MLP projector."""
    if kind == "mlp":
        return HeadSpec(exit_name, "proj", "mlp_proj", (("hidden", 512), ("out_dim", proj_dim)))
    last = ctx.stages[-1]
    blocks = sepconv_layout(ctx.stage_channels[exit_name], ctx.stage_strides[exit_name],
                            ctx.stage_channels[last], ctx.stage_strides[last])
    return HeadSpec(exit_name, "proj", "sepconv_proj",
                    (("out_channels", ctx.stage_channels[last]), ("blocks", blocks)))


def cds(params: CDSParams, ctx: RecipeContext) -> Objective:
    """CE + Σ_exits weight · SupCon(proj(view 1), proj(view 2))."""
    exits = params.exits if params.exits is not None else list(ctx.stages)
    check_exits("cds", exits, ctx, final_ok=params.head == "mlp")
    heads = [projection_head(e, params.head, ctx, params.proj_dim) for e in exits]
    labels = "y_lb" if params.supervised else None
    terms: list[Term] = [
        SupCon(f"supcon_{e}", (Ref("x_lb", e, "proj"), Ref("x_lb2", e, "proj")), labels,
               params.temperature, params.base_temperature, weight=params.weight)
        for e in exits]
    views = ("x_lb",) if params.ce_views == "first" else ("x_lb", "x_lb2")
    objective = Objective([*ce_terms(params.ce_weight, views), *terms], heads,
                          {"x_lb": "cutout", "x_lb2": "color"})
    return objective | cds_unlabeled(params, ctx, exits) if params.unlabeled else objective


def cds_unlabeled(params: CDSParams, ctx: RecipeContext, exits: list[str]) -> Objective:
    """CDS's semi-supervised setting: SimCLR (no labels) between two views of each unlabeled
    image at every exit's projection (the heads the labeled terms train), beside SupCon on the
    labeled ones. The unlabeled views are ``x_ulb_v1`` (Cutout) and ``x_ulb_v2`` (colour)."""
    if ctx.num_unlabeled <= 0:
        raise ValueError("cds.unlabeled=true needs unlabeled images: set data.labels_per_class "
                         "or data.labels_fraction, or data.unlabeled=<folder or CSV>")
    weight = params.weight if params.unlabeled_weight is None else params.unlabeled_weight
    terms: list[Term] = [
        SupCon(f"simclr_ulb_{e}", (Ref("x_ulb_v1", e, "proj"), Ref("x_ulb_v2", e, "proj")), None,
               params.temperature, params.base_temperature, weight=weight)
        for e in exits]
    stream = StreamSpec("unlabeled", keys="ulb", ratio=params.mu or 1.0,
                        yields=params.mu is None)
    return Objective(terms, views={"x_ulb_v1": "cutout", "x_ulb_v2": "color"},
                     streams={"unlabeled": stream})


class MetricParams(RecipeParams):
    """Deep metric learning: a contrastive (SupCon/SimCLR) or triplet loss on a projection of
    the final features, with the main classifier trained as an online linear probe on detached
    features (it reports accuracy but does not shape the backbone). For an offline probe, train
    a second run with ``model.weights=<this run>/checkpoints/best.pt model.freeze_backbone=true
    method=supervised``.
    """

    name: Literal["metric"] = "metric"
    loss: Literal["supcon", "simclr", "triplet"] = "supcon"
    weight: float = Field(default=1.0, gt=0)
    temperature: float = Field(default=0.1, gt=0)
    margin: float = Field(default=0.2, gt=0)
    mining: Literal["batch_hard", "all"] = "batch_hard"
    proj_dim: int = Field(default=128, gt=0)


def metric(params: MetricParams, ctx: RecipeContext) -> Objective:
    """Metric loss on ``final.proj`` + CE of the linear probe ``final.probe``.

    The probe is the main classifier on detached features, so alone it is the deployed
    classifier without shaping the backbone, and beside a recipe with its own CE on the main
    logits it leaves that CE's gradient unchanged.
    """
    heads = [HeadSpec("final", "proj", "mlp_proj",
                      (("hidden", 512), ("out_dim", params.proj_dim))),
             HeadSpec("final", "probe", "probe")]
    probe = CrossEntropy("ce_probe", Ref("x_lb", "final", "probe"))
    if params.loss == "triplet":
        term: Term = Triplet("triplet", Ref("x_lb", "final", "proj"), margin=params.margin,
                             mining=params.mining, weight=params.weight)
        return Objective([probe, term], heads, {"x_lb": "weak"})
    labels = "y_lb" if params.loss == "supcon" else None
    term = SupCon(params.loss, (Ref("x_lb", "final", "proj"), Ref("x_lb2", "final", "proj")),
                  labels, params.temperature, params.temperature, weight=params.weight)
    return Objective([probe, term], heads, {"x_lb": "weak", "x_lb2": "color"})


RECIPES: dict[str, Recipe[Any]] = {
    "cds": Recipe(CDSParams, cds,
                  "contrastive deep supervision: SupCon/SimCLR on projection heads at exits"),
    "metric": Recipe(MetricParams, metric,
                     "metric learning (SupCon, SimCLR or triplet) with an online linear probe"),
}
