"""Knowledge distillation: a teacher network teaches the student (Hinton KD, FitNet hints, the
CDS paper's distillation), or peers teach each other while both train (DML, DoGo).

The teacher is the run's ``teacher`` slot (:mod:`auxilia.teachers`): frozen, in eval mode,
under no_grad. Peers are :class:`~auxilia.parts.PeerSlot` s: trained alongside, in the same
optimizer; the **student** is the one evaluated, selected on validation and exported, and the
peer's accuracy at the end is reported in the run's summary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from auxilia.models.heads import HeadSpec
from auxilia.parts import PeerSlot
from auxilia.recipes.base import (
    Recipe,
    RecipeContext,
    RecipeParams,
    ce_terms,
    check_exits,
    require_teacher,
)
from auxilia.recipes.contrastive import CDSParams, cds
from auxilia.seeding import derive_seed
from auxilia.teachers import TEACHER
from auxilia.terms import (
    CrossEntropy,
    HintMSE,
    KLDistill,
    Objective,
    ProjectionDistance,
    Ref,
    SimilarityKL,
    SoftTargetCE,
    SupCon,
    Term,
)

PEER = "peer"


class KDParams(RecipeParams):
    """Hinton, Vinyals & Dean 2015: ``ce_weight·CE + kd_weight·T²·KL(p_t^T ‖ p_s^T)``, the KL
    summed over classes and divided by the batch. Defaults are the CIFAR-100 benchmark's
    (T = 4, CE 0.1, KD 0.9); ``ce_weight`` unset gives way to the CE of a method it is combined
    with (``[kd, cds]`` keeps CDS's CE at 1.0).

    ``student_exit`` / ``teacher_exit``: any exits with logits (``final``, or an exit carrying a
    classifier head from ``deep_supervision``).
    """

    name: Literal["kd"] = "kd"
    ce_weight: float | None = Field(default=None, ge=0, description="default 0.1, yielding")
    kd_weight: float = Field(default=0.9, ge=0)
    temperature: float = Field(default=4.0, gt=0)
    student_exit: str = "final"
    teacher_exit: str = "final"


def kd(params: KDParams, ctx: RecipeContext) -> Objective:
    teacher = require_teacher("kd", ctx)
    if params.student_exit != "final":
        check_exits("kd.student_exit", [params.student_exit], ctx, final_ok=True)
    width = teacher.shape(params.teacher_exit, "logits")[0]
    if width != ctx.num_classes:
        raise ValueError(f"kd: the teacher's {params.teacher_exit} logits have {width} classes "
                         f"and the data has {ctx.num_classes}; give teacher.num_classes, or a "
                         "teacher trained on these classes")
    ce = 0.1 if params.ce_weight is None else params.ce_weight
    terms: list[Term] = list(ce_terms(ce, ("x_lb",), yields=params.ce_weight is None))
    if params.kd_weight:
        terms.append(KLDistill("kd", Ref("x_lb", params.student_exit),
                               Ref("x_lb", params.teacher_exit, model=TEACHER),
                               params.temperature, weight=params.kd_weight))
    return Objective(terms, views={"x_lb": "weak"}, slots={TEACHER: teacher.slot})


class HintsParams(RecipeParams):
    """FitNet hints (Romero et al., ICLR 2015) as the CIFAR benchmarks train them: CE +
    ``weight``·MSE(regressor(student exit), teacher exit), the regressor (conv3x3 + BN + ReLU,
    sized from both exits' shapes) trained with the student and dropped at export. One stage
    (the benchmark's stage 2), trained jointly rather than in FitNet's two stages."""

    name: Literal["hints"] = "hints"
    student_exit: str = "s2"
    teacher_exit: str | None = Field(default=None, description="default: student_exit")
    weight: float = Field(default=100.0, gt=0)
    ce_weight: float | None = Field(default=None, ge=0, description="default 1.0, yielding")


def hints(params: HintsParams, ctx: RecipeContext) -> Objective:
    teacher = require_teacher("hints", ctx)
    check_exits("hints.student_exit", [params.student_exit], ctx, final_ok=False)
    t_exit = params.teacher_exit or params.student_exit
    shape = teacher.shape(t_exit, "feat")
    if len(shape) != 3:
        raise ValueError(f"hints: the teacher's {t_exit!r} feature has shape {shape}, not a "
                         "feature map [C, H, W]; name a stage exit in hints.teacher_exit")
    head = HeadSpec(params.student_exit, "fitnet", "hint_regressor",
                    (("out_channels", shape[0]), ("out_size", shape[1])))
    ce = 1.0 if params.ce_weight is None else params.ce_weight
    terms: list[Term] = list(ce_terms(ce, ("x_lb",), yields=params.ce_weight is None))
    terms.append(HintMSE(f"fitnet_{params.student_exit}",
                         Ref("x_lb", params.student_exit, "fitnet"),
                         Ref("x_lb", t_exit, "feat", model=TEACHER), weight=params.weight))
    return Objective(terms, [head], {"x_lb": "weak"}, slots={TEACHER: teacher.slot})


class CDSKDParams(CDSParams):
    """The CDS paper's distillation (Zhang et al., ECCV 2022), as its public code computes it:
    the CDS terms (CE on view 1, SupCon at every projection head), soft cross-entropy at T = 3
    against the teacher on view 1, and ``feature_weight`` × the Euclidean distance between the
    teacher's and the student's normalised projections at every exit (both views), through a
    linear adaptation layer where the widths differ. The teacher is a CDS-trained run (its
    projection heads are read); exits pair in depth order."""

    name: Literal["cds_kd"] = "cds_kd"  # type: ignore[assignment]
    kd_weight: float = Field(default=1.0, ge=0)
    kd_temperature: float = Field(default=3.0, gt=0)
    feature_weight: float = Field(default=0.1, ge=0)


def cds_kd(params: CDSKDParams, ctx: RecipeContext) -> Objective:
    teacher = require_teacher("cds_kd", ctx)
    base = cds(CDSParams(**params.model_dump(include=set(CDSParams.model_fields) - {"name"})),
               ctx)
    s_exits = params.exits if params.exits is not None else list(ctx.stages)
    t_exits = teacher.exits_with("proj")
    if len(t_exits) != len(s_exits):
        raise ValueError(f"cds_kd pairs the student's projection exits {s_exits} with the "
                         f"teacher's in depth order, and the teacher has {t_exits or 'none'}: "
                         "the teacher must be a CDS-trained run with as many heads "
                         "(or set cds_kd.exits to as many student exits)")
    terms: list[Term] = []
    if params.kd_weight:
        terms.append(SoftTargetCE("kd_soft", Ref("x_lb"), Ref("x_lb", model=TEACHER),
                                  params.kd_temperature, weight=params.kd_weight))
    views = ("x_lb", "x_lb2")
    for s_exit, t_exit in zip(s_exits, t_exits, strict=True) if params.feature_weight else ():
        options = dict(base.heads[HeadSpec(s_exit, "proj", "").key].options)
        s_dim = int(options.get("out_channels", options.get("out_dim", 0)))
        terms.append(ProjectionDistance(
            f"proj_kd_{s_exit}", tuple(Ref(v, s_exit, "proj") for v in views),
            tuple(Ref(v, t_exit, "proj", model=TEACHER) for v in views), s_dim,
            teacher.channels(t_exit, "proj"), derive_seed(ctx.seed, "term", f"proj_kd_{s_exit}"),
            weight=params.feature_weight))
    return base | Objective(terms, slots={TEACHER: teacher.slot})


class DMLParams(RecipeParams):
    """Deep mutual learning (Zhang et al., CVPR 2018): the student and a peer each minimise
    CE + ``kd_weight``·KL(other's prediction, detached ‖ own), at T = 1. Both are updated in one
    step from the same batch (the common simultaneous form; the paper alternates). The student
    is evaluated, selected and exported; the peer's accuracy is reported at the end."""

    name: Literal["dml"] = "dml"
    peer_model: str | None = Field(default=None, description="default: the student's")
    ce_weight: float = Field(default=1.0, ge=0)
    kd_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=1.0, gt=0)


def dml(params: DMLParams, ctx: RecipeContext) -> Objective:
    terms: list[Term] = list(ce_terms(params.ce_weight, ("x_lb",)))
    if params.ce_weight:
        terms.append(CrossEntropy("ce_peer", Ref("x_lb", model=PEER), weight=params.ce_weight))
    if params.kd_weight:
        terms += [KLDistill("kl_from_peer", Ref("x_lb"), Ref("x_lb", model=PEER),
                            params.temperature, weight=params.kd_weight),
                  KLDistill("kl_peer_from_student", Ref("x_lb", model=PEER), Ref("x_lb"),
                            params.temperature, weight=params.kd_weight)]
    return Objective(terms, views={"x_lb": "weak"},
                     slots={PEER: PeerSlot(architecture=params.peer_model)})


class DoGoParams(RecipeParams):
    """Distill on the Go (Bhat et al., 2021): the student and a peer each learn a contrastive
    projection of two views (SimCLR, or SupCon with labels) and match the row-softmaxed
    similarity matrix of the detached other (τ = 0.1). CE on the main classifiers keeps them
    classifiers on labeled data (``ce_weight: 0`` is the paper's label-free form)."""

    name: Literal["dogo"] = "dogo"
    peer_model: str | None = None
    ce_weight: float = Field(default=1.0, ge=0)
    contrastive_weight: float = Field(default=1.0, ge=0)
    supervised: bool = Field(default=False, description="SupCon with labels; false: SimCLR")
    similarity_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.1, gt=0, description="similarity softmax τ")
    contrastive_temperature: float = Field(default=0.1, gt=0)
    proj_dim: int = Field(default=128, gt=0)


def dogo(params: DoGoParams, ctx: RecipeContext) -> Objective:
    views = ("x_lb", "x_lb2")
    proj = (("hidden", 512), ("out_dim", params.proj_dim))
    heads = [HeadSpec("final", "proj", "mlp_proj", proj, model=m) for m in ("student", PEER)]
    terms: list[Term] = list(ce_terms(params.ce_weight, ("x_lb",)))
    if params.ce_weight:
        terms.append(CrossEntropy("ce_peer", Ref("x_lb", model=PEER), weight=params.ce_weight))
    labels = "y_lb" if params.supervised else None
    for model, other, suffix in (("student", PEER, ""), (PEER, "student", "_peer")):
        refs = tuple(Ref(v, "final", "proj", model=model) for v in views)
        if params.contrastive_weight:
            terms.append(SupCon(f"contrastive{suffix}", refs, labels,
                                params.contrastive_temperature, params.contrastive_temperature,
                                weight=params.contrastive_weight))
        if params.similarity_weight:
            peer_refs = tuple(Ref(v, "final", "proj", model=other) for v in views)
            terms.append(SimilarityKL(f"similarity_kl{suffix}", refs, peer_refs,
                                      params.temperature, weight=params.similarity_weight))
    return Objective(terms, heads, {"x_lb": "weak", "x_lb2": "color"},
                     slots={PEER: PeerSlot(architecture=params.peer_model)})


RECIPES: dict[str, Recipe[Any]] = {
    "kd": Recipe(KDParams, kd,
                 "Hinton KD from a teacher: CE + T²·KL at any exit pair"),
    "hints": Recipe(HintsParams, hints,
                    "FitNet hints: a regressor maps a student stage onto the teacher's"),
    "cds_kd": Recipe(CDSKDParams, cds_kd,
                     "CDS distillation: CDS + soft CE (T=3) + projection distances to a teacher"),
    "dml": Recipe(DMLParams, dml,
                  "deep mutual learning: student and peer, CE + KL to each other"),
    "dogo": Recipe(DoGoParams, dogo,
                   "distill on the go: peers' contrastive projections match similarities"),
}
