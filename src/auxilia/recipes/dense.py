"""Dense regression tasks: a model whose output is a dict of maps, trained under the task's own
loss, with an auxiliary output head on an intermediate stage and a teacher's outputs as
additional targets (a grasp-detection study distilled a ResNet-101 PSPNet teacher's position,
cos, sin and width maps into a ResNet-18 student this way, with an auxiliary head at 0.7)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.models.heads import HeadSpec
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams, check_exits, require_teacher
from auxilia.teachers import TEACHER
from auxilia.terms import HintMSE, Objective, Ref, TargetMSE, Term


class DenseParams(RecipeParams):
    """MSE of each output map against its target (``Split.targets``) at ``task_weight`` ×
    the field's weight, optionally an auxiliary head's at ``aux_weight`` times that, and the
    teacher's maps as additional targets at ``distill_weight`` × the field's weight. Views
    are unaugmented: a crop or flip of the image alone would leave its maps behind; the
    geometric augmentations of ``data.dense`` move image and maps together
    (:mod:`auxilia.data.dense_augment`)."""

    name: Literal["dense"] = "dense"
    exit: str | None = Field(default=None, description="default: the last stage")
    weights: dict[str, float] = Field(default_factory=dict, description="per field (1.0)")
    task_weight: float = Field(default=1.0, ge=0, description="the ground-truth targets' scale")
    aux_exit: str | None = Field(default=None, description="an intermediate stage, or none")
    aux_weight: float = Field(default=0.7, ge=0)
    distill_weight: float = Field(default=0.0, ge=0, description="teacher maps as targets")
    teacher_exit: str = "final"
    hidden: int = Field(default=64, gt=0)


def dense(params: DenseParams, ctx: RecipeContext) -> Objective:
    if not ctx.targets:
        raise ValueError("dense needs dense targets: training splits whose Split.targets hold "
                         "{field: float [N, C, H, W]}: set data.dense.fields to read maps "
                         "beside the images, or pass them to auxilia.engine.train(data=...)")
    exit_name = params.exit or ctx.stages[-1]
    check_exits("dense.exit", [exit_name], ctx, final_ok=False)
    unknown = sorted(set(params.weights) - set(ctx.targets))
    if unknown:
        raise ValueError(f"dense.weights names {unknown}; the targets are "
                         f"{', '.join(ctx.targets)}")
    sides = {shape[-1] for shape in ctx.targets.values()}
    if len(sides) != 1:
        raise ValueError(f"dense targets must share one size, got sides {sorted(sides)}")
    fields = tuple((f, int(shape[0])) for f, shape in ctx.targets.items())
    options = (("fields", fields), ("out_size", sides.pop()), ("hidden", params.hidden))
    heads = [HeadSpec(exit_name, "dense", "dense", options)]
    weight = {f: params.weights.get(f, 1.0) for f in ctx.targets}
    terms: list[Term] = [TargetMSE(f"mse_{f}", Ref("x_lb", exit_name, f), f"target_lb_{f}",
                                   weight=params.task_weight * weight[f])
                         for f in ctx.targets if params.task_weight]
    if params.aux_exit is not None and params.aux_weight and params.task_weight:
        check_exits("dense.aux_exit", [params.aux_exit], ctx, final_ok=False)
        heads.append(HeadSpec(params.aux_exit, "dense", "dense", options))
        terms += [TargetMSE(f"aux_mse_{f}", Ref("x_lb", params.aux_exit, f), f"target_lb_{f}",
                            weight=params.task_weight * params.aux_weight * weight[f])
                  for f in ctx.targets]
    slots = {}
    if params.distill_weight:
        teacher = require_teacher("dense.distill_weight", ctx)
        for f, shape in ctx.targets.items():
            if teacher.shape(params.teacher_exit, f) != tuple(shape):
                raise ValueError(f"the teacher's {params.teacher_exit}.{f} has shape "
                                 f"{teacher.shape(params.teacher_exit, f)}, the target {shape}")
        terms += [HintMSE(f"distill_{f}", Ref("x_lb", exit_name, f),
                          Ref("x_lb", params.teacher_exit, f, model=TEACHER),
                          weight=params.distill_weight * weight[f]) for f in ctx.targets]
        slots[TEACHER] = teacher.slot
    return Objective(terms, heads, {"x_lb": "none"}, slots=slots)


RECIPES: dict[str, Recipe[Any]] = {
    "dense": Recipe(DenseParams, dense,
                    "dense regression maps: task MSE, auxiliary head, teacher maps as targets"),
}
