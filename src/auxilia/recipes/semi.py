"""Semi-supervised learning: the unlabeled stream teaches the student through consistency or
pseudo-labels (Π-model, Temporal Ensembling, Mean Teacher, Pseudo-Label, MixMatch, FixMatch,
UDA).

Every method reads a labeled stream (``x_lb``, batch B) and an unlabeled stream (``x_ulb_*``,
batch μ·B, its own seeded sampler). ``mu`` unset takes the μ of a method it is combined with
(else the method's default); ``ce_weight`` unset gives way to a combined method's CE. Methods
with an EMA model (``ema_decay``) evaluate it beside the student at every evaluation and, by
default, deploy it: it is what is selected on validation, checkpointed as the run's model and
exported (``deploy: student`` keeps the student).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from auxilia.parts import EMASlot, StreamSpec
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams, ce_terms
from auxilia.recipes.mixmatch import MIX_LB, MIX_ULB, TARGET_LB, TARGET_ULB, MixMatchStep
from auxilia.terms import (
    ConfidenceMaskedCE,
    MixedTargetCE,
    MixedTargetMSE,
    Objective,
    Ramp,
    Ref,
    SoftmaxConsistency,
    SoftmaxKLConsistency,
    TemporalEnsemble,
    Term,
    TSACrossEntropy,
)

EMA = "ema"
UNLABELED = "unlabeled"


class SemiParams(RecipeParams):
    """Settings every semi-supervised method shares."""

    mu: float | None = Field(default=None, gt=0,
                             description="unlabeled per labeled sample; default per method")
    weight: float = Field(default=1.0, ge=0, description="λ_u, the unlabeled loss's weight")
    rampup: float = Field(default=0.0, ge=0, le=1,
                          description="share of training over which λ_u ramps up")
    ce_weight: float | None = Field(default=None, ge=0, description="default 1.0, yielding")
    ema_decay: float | None = Field(default=None, ge=0, lt=1,
                                    description="an EMA model of the student, evaluated too")
    ema_buffers: Literal["copy", "average"] = Field(
        default="average", description="BatchNorm statistics of the EMA model")
    deploy: Literal["ema", "student"] | None = Field(
        default=None, description="the model selected and exported; default: ema if any")

    TITLE: ClassVar[str] = "the method"
    PAPER_EMA: ClassVar[bool] = False  # the paper reports (and so deploys) its EMA model

    def deploy_reason(self, deployed: str) -> str | None:
        """Why the EMA model is deployed (see :meth:`RecipeParams.deploy_reason`)."""
        if deployed != EMA or self.ema_decay is None or self.deploy == "student":
            return None
        why = "as the paper does" if self.PAPER_EMA else f"as {self.name}.ema_decay asks"
        return (f"{self.TITLE} evaluates and deploys the EMA of the student's weights (decay "
                f"{self.ema_decay:g}), {why}; {self.name}.deploy=student deploys the student")


def require_unlabeled(method: str, ctx: RecipeContext) -> None:
    """Refuse a semi-supervised method without unlabeled data, saying how to give some."""
    if ctx.num_unlabeled <= 0:
        raise ValueError(f"{method} learns from unlabeled images, and this data has none: set "
                         "data.labels_per_class or data.labels_fraction (hide the labels of the "
                         "rest of train), or data.unlabeled=<folder or CSV of images>")


def semi_objective(params: SemiParams, ctx: RecipeContext, default_mu: float,
                   terms: list[Term], views: dict[str, str], *, ema: EMASlot | None = None,
                   default_ce: float | None = 1.0, **parts: object) -> Objective:
    """The shared frame: CE on the labeled view, the unlabeled stream, the EMA slot.

    ``default_ce``: the plain CE's weight when ``ce_weight`` is unset (0: none unless given;
    None: never, the method's terms have their own CE).
    """
    require_unlabeled(params.name, ctx)
    mu = default_mu if params.mu is None else params.mu
    stream = StreamSpec(UNLABELED, keys="ulb", ratio=mu, yields=params.mu is None)
    ce = 0.0 if default_ce is None else (
        default_ce if params.ce_weight is None else params.ce_weight)
    all_terms = [*ce_terms(ce, ("x_lb",), yields=params.ce_weight is None), *terms]
    if ema is None and params.ema_decay is not None:
        ema = EMASlot(decay=params.ema_decay, buffers=params.ema_buffers)
    slots = {EMA: ema} if ema is not None else {}
    deploy = params.deploy or ("ema" if ema is not None else None)
    if deploy == "ema" and ema is None:
        raise ValueError(f"{params.name}.deploy=ema needs an EMA model: set "
                         f"{params.name}.ema_decay (e.g. 0.999)")
    return Objective(all_terms, views={"x_lb": "weak", **views}, slots=slots,
                     streams={UNLABELED: stream}, deploy=deploy, **parts)  # type: ignore[arg-type]


def _ramp(params: SemiParams, kind: str = "sigmoid") -> Ramp:
    return Ramp(kind if params.rampup > 0 else "none", params.rampup)  # type: ignore[arg-type]


class PiModelParams(SemiParams):
    """Π-model (Laine & Aila, ICLR 2017): two stochastic passes of each unlabeled image (two
    weak augmentations, dropout), softmax MSE between them, the second pass a detached target,
    λ_u ramped up with exp(−5(1 − t)²). The paper's w_max = 100·M/N scales a loss averaged over
    a mixed batch; here each stream's loss is its own mean, so λ_u is not scaled."""

    name: Literal["pi_model"] = "pi_model"
    TITLE: ClassVar[str] = "Π-model"
    weight: float = Field(default=10.0, ge=0)
    rampup: float = Field(default=0.3, ge=0, le=1)


def pi_model(params: PiModelParams, ctx: RecipeContext) -> Objective:
    term = SoftmaxConsistency("pi_consistency", Ref("x_ulb_w"), Ref("x_ulb_w2"),
                              weight=params.weight, ramp=_ramp(params))
    return semi_objective(params, ctx, 1.0, [term], {"x_ulb_w": "weak", "x_ulb_w2": "weak"})


class TemporalEnsemblingParams(SemiParams):
    """Temporal Ensembling (Laine & Aila, ICLR 2017): the target of each unlabeled image is the
    bias-corrected moving average Z/(1 − α^t) of its past predictions (α = 0.6, Z updated at
    the end of every epoch of the unlabeled stream from committed steps); w_max 30."""

    name: Literal["temporal_ensembling"] = "temporal_ensembling"
    TITLE: ClassVar[str] = "Temporal Ensembling"
    weight: float = Field(default=30.0, ge=0)
    rampup: float = Field(default=0.3, ge=0, le=1)
    alpha: float = Field(default=0.6, ge=0, lt=1)


def temporal_ensembling(params: TemporalEnsemblingParams, ctx: RecipeContext) -> Objective:
    require_unlabeled(params.name, ctx)
    term = TemporalEnsemble("te_consistency", Ref("x_ulb_w"), ctx.num_unlabeled,
                            ctx.num_classes, alpha=params.alpha, weight=params.weight,
                            ramp=_ramp(params))
    return semi_objective(params, ctx, 1.0, [term], {"x_ulb_w": "weak"})


class MeanTeacherParams(SemiParams):
    """Mean Teacher (Tarvainen & Valpola, NeurIPS 2017): the teacher is an EMA of the student
    (decay min(1 − 1/(t+1), α), α = 0.99 during the ramp-up and 0.999 after), run in train mode
    (dropout) on its own noisy view; softmax MSE between student and teacher on every sample
    (labeled and unlabeled), λ_u up to ``weight`` with exp(−5(1 − t)²). Noise: translations
    (+ flips on natural images) and Gaussian input noise σ = 0.15. The EMA model is deployed.

    The paper's ablation (§3.2, figure 4) as options:

    * ``consistency``: ``mse`` (softmax MSE, the paper's choice) or ``kl``:
      2(1 − 1/C)/C² · KL(teacher ‖ student) per sample (the authors' scaling, τ = 1).
    * ``teacher_dropout``: false runs the teacher's dropout layers as in eval (no dropout
      noise) while its BatchNorm keeps normalising with batch statistics; the student's
      dropout is unchanged.
    * ``input_noise``: false drops the Gaussian input noise of both models and keeps the
      augmentation (the ``weak`` view instead of ``noisy``).
    * ``noise``: false drops all input noise, augmentation included (unaugmented views).
    * ``ema_decay``: α; 0 makes the teacher the student of the step (a Π-model whose second
      pass is the teacher's), so set ``rampup_decay`` too (it is used during the ramp-up).
    """

    name: Literal["mean_teacher"] = "mean_teacher"
    TITLE: ClassVar[str] = "Mean Teacher"
    PAPER_EMA: ClassVar[bool] = True
    weight: float = Field(default=100.0, ge=0)
    rampup: float = Field(default=0.3, ge=0, le=1)
    ema_decay: float | None = Field(default=0.999, ge=0, lt=1)
    rampup_decay: float = Field(default=0.99, ge=0, lt=1)
    noise: bool = Field(default=True, description="false: no augmentation, no input noise")
    input_noise: bool = Field(default=True, description="Gaussian input noise σ 0.15 on "
                                                        "both models' views")
    teacher_dropout: bool = Field(default=True, description="the EMA teacher's forward with "
                                                            "dropout")
    consistency: Literal["mse", "kl"] = Field(default="mse", description="softmax MSE or "
                                              "KL(teacher ‖ student)")

    @model_validator(mode="after")
    def _noise_settings_agree(self) -> MeanTeacherParams:
        if not self.noise and self.input_noise and "input_noise" in self.model_fields_set:
            raise ValueError("mean_teacher.noise=false already turns the input noise off; "
                             "drop mean_teacher.input_noise=true, or set noise=true to keep "
                             "the augmentation and choose the input noise")
        return self

    def view(self) -> str:
        """The view of both models' inputs: noisy, weak (augmentation only) or none."""
        if not self.noise:
            return "none"
        return "noisy" if self.input_noise else "weak"


MT_CONSISTENCY: dict[str, type[SoftmaxConsistency]] = {
    "mse": SoftmaxConsistency, "kl": SoftmaxKLConsistency}


def mean_teacher(params: MeanTeacherParams, ctx: RecipeContext) -> Objective:
    if params.ema_decay is None:
        raise ValueError("mean_teacher's teacher is its EMA model: mean_teacher.ema_decay "
                         "cannot be null")
    ema = EMASlot(decay=params.ema_decay, rampup_decay=params.rampup_decay,
                  rampup=params.rampup, mode="train", buffers=params.ema_buffers,
                  dropout=params.teacher_dropout)
    ramp = _ramp(params)
    term = MT_CONSISTENCY[params.consistency]
    terms: list[Term] = [
        term("mt_consistency", Ref("x_ulb_w"), Ref("x_ulb_w2", model=EMA),
             weight=params.weight, ramp=ramp),
        term("mt_consistency_lb", Ref("x_lb"), Ref("x_lb2", model=EMA),
             weight=params.weight, ramp=ramp)]
    view = params.view()
    views = {"x_lb": view, "x_lb2": view, "x_ulb_w": view, "x_ulb_w2": view}
    return semi_objective(params, ctx, 1.0, terms, views, ema=ema)


class PseudoLabelParams(SemiParams):
    """Pseudo-Label (Lee, 2013) as USB runs it: the model's own hard predictions on the weak
    unlabeled view are its targets where their confidence reaches 0.95; λ_u 1, ramped up
    linearly over 40 % of training."""

    name: Literal["pseudo_label"] = "pseudo_label"
    TITLE: ClassVar[str] = "Pseudo-Label"
    threshold: float = Field(default=0.95, ge=0, le=1)
    rampup: float = Field(default=0.4, ge=0, le=1)


def pseudo_label(params: PseudoLabelParams, ctx: RecipeContext) -> Objective:
    term = ConfidenceMaskedCE("pseudo_label", Ref("x_ulb_w"), Ref("x_ulb_w"),
                              threshold=params.threshold, weight=params.weight,
                              ramp=_ramp(params, "linear"))
    return semi_objective(params, ctx, 1.0, [term], {"x_ulb_w": "weak"})


class FixMatchParams(SemiParams):
    """FixMatch (Sohn et al., NeurIPS 2020): hard pseudo-labels from the weak view where the
    confidence reaches τ = 0.95 train the strong view (RandAugment + Cutout); μ = 7, λ_u = 1;
    one concatenated forward; an EMA model (0.999) evaluated and deployed, as the paper
    reports."""

    name: Literal["fixmatch"] = "fixmatch"
    TITLE: ClassVar[str] = "FixMatch"
    PAPER_EMA: ClassVar[bool] = True
    threshold: float = Field(default=0.95, ge=0, le=1)
    ema_decay: float | None = Field(default=0.999, ge=0, lt=1)


def fixmatch(params: FixMatchParams, ctx: RecipeContext) -> Objective:
    term = ConfidenceMaskedCE("fixmatch", Ref("x_ulb_s"), Ref("x_ulb_w"),
                              threshold=params.threshold, weight=params.weight,
                              ramp=_ramp(params, "linear"))
    return semi_objective(params, ctx, 7.0, [term], {"x_ulb_w": "weak", "x_ulb_s": "strong"})


class UDAParams(SemiParams):
    """UDA (Xie et al., NeurIPS 2020): the weak view's prediction sharpened at T = 0.4 is a
    soft target for the strong view where its confidence reaches 0.8; λ_u 1, μ 7; optional
    training-signal annealing of the labeled CE (``tsa``: linear, log or exp)."""

    name: Literal["uda"] = "uda"
    TITLE: ClassVar[str] = "UDA"
    threshold: float = Field(default=0.8, ge=0, le=1)
    temperature: float = Field(default=0.4, gt=0)
    tsa: Literal["linear", "log", "exp"] | None = None


def uda(params: UDAParams, ctx: RecipeContext) -> Objective:
    terms: list[Term] = [ConfidenceMaskedCE(
        "uda", Ref("x_ulb_s"), Ref("x_ulb_w"), threshold=params.threshold, hard=False,
        temperature=params.temperature, weight=params.weight, ramp=_ramp(params, "linear"))]
    if params.tsa is not None:  # TSA's CE replaces the plain one
        ce = 1.0 if params.ce_weight is None else params.ce_weight
        terms.append(TSACrossEntropy("ce", Ref("x_lb"), ctx.num_classes, params.tsa, weight=ce))
    return semi_objective(params, ctx, 7.0, terms, {"x_ulb_w": "weak", "x_ulb_s": "strong"},
                          default_ce=None if params.tsa is not None else 1.0)


class MixMatchParams(SemiParams):
    """MixMatch (Berthelot et al., NeurIPS 2019): K = 2 weak views of each unlabeled image,
    their mean prediction sharpened at T = 0.5 (no gradient) as its guessed label; labeled and
    unlabeled inputs mixed with λ' = max(λ, 1 − λ), λ ~ Beta(0.75, 0.75); L = soft CE on the
    mixed labeled part + λ_u·MSE of probabilities on the mixed unlabeled part, λ_u = 75 ramped
    up linearly (the paper: over 16,384 of 2^20 steps); an EMA model (0.999) deployed."""

    name: Literal["mixmatch"] = "mixmatch"
    TITLE: ClassVar[str] = "MixMatch"
    PAPER_EMA: ClassVar[bool] = True
    weight: float = Field(default=75.0, ge=0)
    rampup: float = Field(default=0.3, ge=0, le=1)
    k: int = Field(default=2, ge=1, le=8)
    temperature: float = Field(default=0.5, gt=0)
    alpha: float = Field(default=0.75, gt=0)
    ema_decay: float | None = Field(default=0.999, ge=0, lt=1)


def mixmatch(params: MixMatchParams, ctx: RecipeContext) -> Objective:
    guess_views = tuple(["x_ulb_w"] + [f"x_ulb_w{i}" for i in range(2, params.k + 1)])
    terms: list[Term] = [
        MixedTargetCE("mixmatch_x", Ref(MIX_LB), TARGET_LB),
        MixedTargetMSE("mixmatch_u", Ref(MIX_ULB), TARGET_ULB, weight=params.weight,
                       ramp=_ramp(params, "linear"))]
    step = MixMatchStep(guess_views, params.temperature, params.alpha, ctx.num_classes,
                        ctx.seed)
    # L_x replaces the plain CE: none unless ce_weight is given
    return semi_objective(params, ctx, 1.0, terms, dict.fromkeys(guess_views, "weak"),
                          default_ce=0.0, step=step)


SSL_PROTOCOL: dict[str, Any] = {
    "optim.name": "sgd", "optim.lr": 0.03, "optim.momentum": 0.9, "optim.nesterov": True,
    "optim.weight_decay": 5e-4, "schedule.name": "fixmatch_cosine"}
"""The standard protocol's optimizer and schedule (FixMatch, USB): SGD with Nesterov momentum
0.9, lr 0.03 decayed as lr·cos(7πk/16K), weight decay 5e-4 (batch 64 labeled: the default)."""
MIXMATCH_OPTIM: dict[str, Any] = {
    "optim.name": "adamw", "optim.lr": 0.002, "optim.weight_decay": 0.02,
    "schedule.name": "constant"}
"""MixMatch's: Adam at a constant lr 0.002; the authors' code decays the weights by 0.02·lr
after every step, which is AdamW's decoupled weight decay 0.02."""

RECIPES: dict[str, Recipe[Any]] = {
    "pi_model": Recipe(PiModelParams, pi_model,
                       "Π-model: consistency between two stochastic passes of unlabeled images"),
    "temporal_ensembling": Recipe(TemporalEnsemblingParams, temporal_ensembling,
                                  "temporal ensembling: consistency with each image's past "
                                  "predictions"),
    "mean_teacher": Recipe(MeanTeacherParams, mean_teacher,
                           "mean teacher: consistency with an EMA of the student"),
    "pseudo_label": Recipe(PseudoLabelParams, pseudo_label,
                           "pseudo-label: confident own predictions as hard labels"),
    "fixmatch": Recipe(FixMatchParams, fixmatch,
                       "fixmatch: confident weak-view labels train the strong view",
                       SSL_PROTOCOL, "Sohn et al. 2020 (FixMatch), §4 and appendix"),
    "uda": Recipe(UDAParams, uda,
                  "UDA: sharpened weak-view predictions as soft targets of the strong view",
                  SSL_PROTOCOL, "the standard protocol UDA is run under in FixMatch's and "
                  "USB's comparisons"),
    "mixmatch": Recipe(MixMatchParams, mixmatch,
                       "mixmatch: guessed, sharpened labels and mixup across both streams",
                       MIXMATCH_OPTIM, "Berthelot et al. 2019 (MixMatch), §4 and the authors' "
                       "code (weight decay 0.02·lr per step)"),
}
