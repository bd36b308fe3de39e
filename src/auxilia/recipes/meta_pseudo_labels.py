"""Meta Pseudo Labels (Pham et al., CVPR 2021): a teacher that learns from its student's feedback.

Two networks, two optimizers, one step (:class:`MetaPseudoLabelsStep`):

1. the student's labeled cross-entropy ``CE_old`` (no gradient, its BatchNorm statistics left
   as they were);
2. one concatenated forward of the teacher over ``x_lb``, ``x_ulb_w`` and ``x_ulb_s``, and of
   the student over ``x_ulb_s`` (and whatever a combined method reads);
3. pseudo-labels ``ŷ`` from the teacher's strong-view logits: sampled from its softmax (the
   paper) or its argmax (``pseudo_labels: argmax``, the released code);
4. the student steps on ``CE(S(x_ulb_s), ŷ)`` (label smoothing 0.15), plus any combined
   method's student terms;
5. ``CE_new``, as in 1, after the step; ``h = (CE_old − CE_new) − b``, ``b`` a moving average
   of the earlier drops (:class:`~auxilia.recipes.mpl_terms.FeedbackCE`);
6. the teacher steps on ``CE_l + λ_u·UDA + h·CE(T(x_ulb_s), ŷ)``.

**The sign of h.** With ``ŷ ~ T(x_u; θ_T)`` and ``θ_S' = θ_S − η_S ∇CE(ŷ, S(x_u; θ_S))``, the
teacher minimises ``E_ŷ[L_l(θ_S'(ŷ))]``. The score-function identity gives
``∇_T E[L_l(θ_S')] = E[L_l(θ_S'(ŷ)) ∇_T log T(ŷ)] = E[(L_l(θ_S') − c) ∇_T log T(ŷ)]`` for any
``c`` independent of ŷ; with ``c = CE_old = L_l(θ_S)`` and ``∇ log T = −∇ CE(ŷ, T)`` this is
``E[(CE_old − CE_new) · ∇_T CE(ŷ, T(x_u))]``: descending on ``h·CE(ŷ, T)`` with
``h = CE_old − CE_new`` descends on the student's expected post-step labeled loss (exactly,
for sampled labels; the first-order Taylor step of the paper's appendix turns the same ``h`` into
``η_S ∇L_l(θ_S')ᵀ ∇CE(ŷ, S)``). When the labels helped the student (``CE_new < CE_old``),
``h > 0`` and the teacher makes them more likely.

The released code (google-research meta_pseudo_labels, and kekmodel/MPL-pytorch's "author's
code formula") computes ``dot = CE_new − CE_old`` (minus its moving average): the opposite
sign, which pushes the teacher toward labels that hurt the student. The google code also takes
the MPL cross-entropy of ``softmax(logits)`` (stopped) against the same logits, whose gradient
is ``softmax − softmax = 0``: as released the feedback term trains nothing, and the teacher
learns from its labeled CE and UDA alone. ``tests/recipes/test_meta_pseudo_labels.py`` shows on
a toy problem that ``CE_old − CE_new`` lowers the student's labeled loss and the released sign
raises it.

**Wait steps.** For the first ``wait`` share of training (kekmodel: 3,000 of 300,000 steps,
where the student's learning rate is held at 0) the student takes no step and ``h = 0``: the
teacher trains on ``CE_l + λ_u·UDA`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from auxilia.parts import MAIN, STUDENT, OptimizerSpec, PeerSlot, StepResult, StepTools
from auxilia.recipes.base import Recipe, RecipeContext
from auxilia.recipes.mpl_terms import (
    FEEDBACK_VIEW,
    FeedbackCE,
    PseudoLabels,
    Sampling,
    StudentPseudoCE,
)
from auxilia.recipes.semi import SemiParams, semi_objective
from auxilia.terms import ConfidenceMaskedCE, CrossEntropy, Objective, Progress, Ramp, Ref

TEACHER = "mpl_teacher"
"""The teacher's slot and optimizer (not ``teacher``: that is a distillation's frozen one)."""
STUDENT_CE_U, TEACHER_CE, TEACHER_UDA, TEACHER_MPL = (
    "student_ce_u", "teacher_ce", "teacher_uda", "teacher_mpl")
TEACHER_TERMS = (TEACHER_CE, TEACHER_UDA)  # plus TEACHER_MPL, weighted by h


class MetaPseudoLabelsParams(SemiParams):
    """Meta Pseudo Labels (Pham et al., CVPR 2021), with kekmodel/MPL-pytorch's CIFAR-10-4K
    settings as defaults: μ 7; the teacher's UDA at threshold 0.6, T 0.7, λ_u 8 ramped up
    linearly over 5,000 of 300,000 steps (``rampup`` 1/60); the student waits 3,000 steps
    (``wait`` 0.01); label smoothing 0.15 on the student's CE; the feedback's moving-average
    baseline at 0.99. The student does not see the labels (``ce_weight`` adds a labeled CE to
    it); fine-tune it on them afterwards (``configs/mpl_cifar10_4k_rounds.yaml``)."""

    name: Literal["meta_pseudo_labels"] = "meta_pseudo_labels"
    TITLE: ClassVar[str] = "Meta Pseudo Labels"
    weight: float = Field(default=8.0, ge=0, description="λ_u of the teacher's UDA loss")
    rampup: float = Field(default=1 / 60, ge=0, le=1,
                          description="share of training over which λ_u ramps up linearly")
    threshold: float = Field(default=0.6, ge=0, le=1, description="the UDA confidence mask")
    temperature: float = Field(default=0.7, gt=0, description="the UDA target's sharpening")
    teacher_ce_weight: float = Field(default=1.0, ge=0, description="the teacher's labeled CE")
    mpl_weight: float = Field(default=1.0, ge=0, description="the feedback term h·CE's weight")
    pseudo_labels: Sampling = Field(default="sample",
                                    description="sample from the teacher's softmax, or argmax")
    label_smoothing: float = Field(default=0.15, ge=0, lt=1,
                                   description="ε of the student's CE on pseudo-labels")
    wait: float = Field(default=0.01, ge=0, lt=1,
                        description="share of training before the student's first step")
    baseline_decay: float = Field(default=0.99, ge=0, le=1,
                                  description="decay of h's moving-average baseline")
    teacher_model: str | None = Field(default=None,
                                      description="the teacher's architecture; default the "
                                      "student's")
    teacher_lr: float | None = Field(default=None, gt=0,
                                     description="the teacher's learning rate; default optim.lr")


@dataclass(frozen=True)
class MetaPseudoLabelsStep:
    """The MPL step (see the module docstring).

    Args:
        wait: the share of training during which the student does not step.
        student_optimizer: the optimizer of the student side (every trainable thing but the
            teacher).
    """

    wait: float = 0.0
    student_optimizer: str = MAIN

    def waiting(self, progress: Progress) -> bool:
        """Whether this step is one of the student's wait steps (host integers only)."""
        return progress.step < round(self.wait * progress.total_steps)

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        objective = tools.objective
        feedback: FeedbackCE = objective.terms[TEACHER_MPL]  # type: ignore[assignment]
        student_terms = [n for n in objective.terms if n not in (*TEACHER_TERMS, TEACHER_MPL)]
        waiting = self.waiting(progress)
        wanted = objective.inputs()
        if waiting:
            wanted = {TEACHER: wanted[TEACHER]}
        else:
            ce_old = labeled_ce(tools, batch)
        with tools.autocast():
            outputs: dict[Any, Any] = dict(tools.forward(wanted, batch))
        losses: dict[str, torch.Tensor] = {}
        if waiting:
            zero = outputs[(TEACHER, "x_lb")]["final"]["logits"].new_zeros((), dtype=torch.float)
            h = zero
            losses.update(dict.fromkeys(student_terms, zero))
            student_loss = zero
        else:
            with tools.autocast():
                student_loss = weighted(objective, student_terms, outputs, batch, progress,
                                        losses)
            tools.backward_step(student_loss, [self.student_optimizer], losses=losses)
            drop = ce_old - labeled_ce(tools, batch)
            h = feedback.feedback(drop)
            outputs[(TEACHER, FEEDBACK_VIEW)] = {"final": {"drop": drop}}
        with tools.autocast():
            teacher_loss = weighted(objective, list(TEACHER_TERMS), outputs, batch, progress,
                                    losses)
            mpl = feedback.compute(outputs, batch, progress)
            teacher_loss = teacher_loss + feedback.weight_at(progress) * h * mpl
        losses[TEACHER_MPL], losses["h"] = mpl.detach(), h
        tools.backward_step(teacher_loss, [TEACHER], losses=losses)
        return StepResult({"loss": (student_loss + teacher_loss).detach(), **losses}, outputs)


def weighted(objective: Objective, names: list[str], outputs: Mapping[Any, Any],
             batch: Mapping[str, torch.Tensor], progress: Progress,
             logged: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ w·term`` over the named terms (as :meth:`Objective.forward` sums them all), each
    term's unweighted value and metrics added to ``logged``."""
    total: torch.Tensor | None = None
    for name in names:
        term = objective.terms[name]
        value = term.compute(outputs, batch, progress)  # type: ignore[operator]
        logged[name] = value.detach()
        for key, metric in term.metrics(outputs, batch, progress).items():  # type: ignore[operator]
            logged[f"{name}/{key}"] = metric.detach()
        part = term.weight_at(progress) * value  # type: ignore[operator]
        total = part if total is None else total + part
    if total is None:
        raise ValueError("meta_pseudo_labels: a side of the step has no terms")
    return total


def labeled_ce(tools: StepTools, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The student's cross-entropy on ``x_lb`` (a scalar on the device), without gradient.

    In train mode (its batch's statistics: ``CE_old`` and ``CE_new`` see the same batch
    normalised the same way, so their difference is the step's alone), with the BatchNorm
    running statistics put back, so only the student's training forward updates them.
    """
    student = tools.models[STUDENT]
    saved = [b.clone() for b in student.buffers()]
    with torch.no_grad(), tools.autocast():
        logits = tools.forward({STUDENT: ["x_lb"]}, batch)[(STUDENT, "x_lb")]["final"]["logits"]
    for buffer, old in zip(student.buffers(), saved, strict=True):
        buffer.copy_(old)
    return F.cross_entropy(logits.float(), batch["y_lb"])


def meta_pseudo_labels(params: MetaPseudoLabelsParams, ctx: RecipeContext) -> Objective:
    labels = PseudoLabels(params.pseudo_labels, ctx.seed)
    terms = [
        ConfidenceMaskedCE(TEACHER_UDA, Ref("x_ulb_s", model=TEACHER),
                           Ref("x_ulb_w", model=TEACHER), threshold=params.threshold,
                           hard=False, temperature=params.temperature, weight=params.weight,
                           ramp=Ramp("linear" if params.rampup > 0 else "none", params.rampup)),
        CrossEntropy(TEACHER_CE, Ref("x_lb", model=TEACHER), weight=params.teacher_ce_weight),
        FeedbackCE(TEACHER_MPL, Ref("x_ulb_s", model=TEACHER), labels, params.mpl_weight,
                   params.baseline_decay),
        StudentPseudoCE(STUDENT_CE_U, Ref("x_ulb_s"), Ref("x_ulb_s", model=TEACHER), labels,
                        params.label_smoothing)]
    teacher_optim = {} if params.teacher_lr is None else {"lr": params.teacher_lr}
    # the unlabeled stream, the student's EMA and the deployed model as every semi method's
    student = semi_objective(params, ctx, 7.0, terms, {"x_ulb_w": "weak", "x_ulb_s": "strong"},
                             default_ce=0.0)
    return student | Objective(
        slots={TEACHER: PeerSlot(architecture=params.teacher_model)},
        optimizers={TEACHER: OptimizerSpec((TEACHER,), optim=teacher_optim),
                    MAIN: OptimizerSpec()},
        step=MetaPseudoLabelsStep(params.wait))


MPL_OPTIM: dict[str, Any] = {
    "optim.name": "sgd", "optim.lr": 0.05, "optim.momentum": 0.9, "optim.nesterov": True,
    "optim.weight_decay": 5e-4, "schedule.name": "cosine"}
"""kekmodel/MPL-pytorch's CIFAR-10-4K optimizers: SGD with Nesterov momentum 0.9, lr 0.05 for
teacher and student, weight decay 5e-4, cosine decay."""

RECIPES: dict[str, Recipe[Any]] = {
    "meta_pseudo_labels": Recipe(
        MetaPseudoLabelsParams, meta_pseudo_labels,
        "meta pseudo labels: a trained teacher's pseudo-labels, the teacher learning from the "
        "student's labeled loss", MPL_OPTIM, "kekmodel/MPL-pytorch's CIFAR-10-4K settings "
        "(Pham et al. 2021, appendix)"),
}
