"""Noisy Student's student round (Xie et al., "Self-training with Noisy Student improves
ImageNet classification", CVPR 2020).

A labelling round (:mod:`auxilia.engine.labelling`) writes the teacher's pseudo-labels of the
unlabeled images; the student round reads them as ``data.pseudo_labels`` (the ``pseudo``
split) and trains on labeled and pseudo-labelled images together, **noised**: both streams
through the ``randaugment`` view, dropout before the classifier (``model.drop_rate``) and
stochastic depth (``model.drop_path``, 0.2 in the paper, scaled linearly over the blocks).
The pipeline's config sets the model noise; this recipe sets the data noise and the loss.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.data.pseudo_labels import PSEUDO_FIELD
from auxilia.parts import StreamSpec
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams, ce_terms
from auxilia.terms import MixedTargetCE, Objective, Ref

PSEUDO = "pseudo"
NOISE_VIEW = "randaugment"


class NoisyStudentParams(RecipeParams):
    """The student round: ``L = CE(x_lb, y) + ratio · CE(x_ps, pseudo-label)``, each CE the mean
    over its own batch, the pseudo-labelled batch ``ratio ×`` the labeled one (the authors'
    unlabeled batch ratio: 1 for B0 and 3 for B1–B7 on ImageNet, 5 in the 32 px SVHN setting).
    The pseudo-labels are soft or hard as the labelling round wrote them; the CE is the soft
    cross-entropy against the file's rows."""

    name: Literal["noisy_student"] = "noisy_student"
    ratio: float = Field(default=3.0, gt=0, description="pseudo-labelled per labeled sample")
    weight: float | None = Field(default=None, ge=0,
                                 description="weight of the pseudo-label CE; default: ratio")
    ce_weight: float | None = Field(default=None, ge=0, description="default 1.0, yielding")
    view: Literal["randaugment", "strong", "weak", "none"] = Field(
        default=NOISE_VIEW, description="the input noise of both streams")


def noisy_student(params: NoisyStudentParams, ctx: RecipeContext) -> Objective:
    if ctx.num_pseudo <= 0:
        raise ValueError("noisy_student trains on a teacher's pseudo-labels, and this data has "
                         "none: set data.pseudo_labels=<the pseudo_labels.npz of a labelling "
                         "round> (see configs/noisy_student_digits.yaml)")
    weight = params.ratio if params.weight is None else params.weight
    ce = 1.0 if params.ce_weight is None else params.ce_weight
    terms = [*ce_terms(ce, ("x_lb",), yields=params.ce_weight is None),
             MixedTargetCE("noisy_student", Ref("x_ps"), f"target_ps_{PSEUDO_FIELD}",
                           weight=weight)]
    stream = StreamSpec(PSEUDO, keys="ps", ratio=params.ratio)
    return Objective(terms, views={"x_lb": params.view, "x_ps": params.view},
                     streams={PSEUDO: stream})


RECIPES: dict[str, Recipe[Any]] = {
    "noisy_student": Recipe(NoisyStudentParams, noisy_student,
                            "noisy student: a noised student on labeled + teacher-labelled "
                            "images (after a labelling round)"),
}
