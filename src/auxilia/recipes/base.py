"""What a recipe is: a typed parameter block and a function that builds an objective."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from auxilia.strict import Strict
from auxilia.teachers import LoadedTeacher
from auxilia.terms import CrossEntropy, Objective, Ref, Term


class RecipeParams(Strict):
    """Parameters of one method in ``method: [...]``; subclasses fix ``name`` and add fields."""

    name: str

    def deploy_reason(self, deployed: str) -> str | None:
        """Why this method's objective deploys ``deployed`` (a slot other than the student),
        in one sentence for the final table; None when it does not deploy it."""
        return None


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may know of the run when it builds its objective."""

    stages: tuple[str, ...]
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    num_classes: int
    num_train: int = 0  # labeled training samples: the size of per-sample banks
    num_unlabeled: int = 0  # unlabeled samples (the unlabeled stream's banks)
    num_pseudo: int = 0  # pseudo-labelled entries (data.pseudo_labels, Noisy Student)
    image_shape: tuple[int, int, int] = (3, 32, 32)  # the student's input (C, H, W)
    seed: int = 0  # the run's seed: terms with parameters initialise from streams of it
    teacher: LoadedTeacher | None = None  # the configured teacher, built before the objective
    targets: dict[str, tuple[int, ...]] | None = None  # dense targets: field → [C, H, W]


def require_teacher(method: str, ctx: RecipeContext) -> LoadedTeacher:
    """The run's teacher, or an error that says how to give one."""
    if ctx.teacher is None:
        raise ValueError(f"{method} distils a teacher, and none is configured: set "
                         "teacher.run=<an auxilia run folder or checkpoint>, or teacher.model="
                         "<name> with teacher.weights=<file>, or pass teacher=<nn.Module> to "
                         "auxilia.train")
    return ctx.teacher


P = TypeVar("P", bound=RecipeParams)
"""A recipe's own parameter model (a :class:`RecipeParams` subclass)."""


@dataclass(frozen=True)
class Recipe(Generic[P]):
    """A registered method: its parameter model, its builder and a one-line summary.

    Generic over the parameter model, so that a builder taking its own parameters
    (``kd(params: KDParams, ctx)``) registers as ``Recipe(KDParams, kd, ...)`` with the two
    checked against each other; a registry of several methods holds ``Recipe[Any]``.

    ``defaults``: the method's own settings of other sections (dotted keys such as
    ``optim.lr``), applied where the user did not set the key
    (:mod:`auxilia.method_defaults`); ``defaults_source`` says where they come from.
    """

    params: type[P]
    build: Callable[[P, RecipeContext], Objective]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    defaults_source: str = ""


def check_exits(method: str, exits: list[str], ctx: RecipeContext, final_ok: bool) -> None:
    """Refuse exit names the model does not have, naming the valid ones.

    Args:
        method: the recipe's name, for the message.
        exits: the exits the recipe's parameters name.
        ctx: the run's context (its stages).
        final_ok: whether ``final`` is a valid exit for this recipe's heads.

    Raises:
        ValueError: naming the unknown exits and the valid ones.
    """
    valid = list(ctx.stages) + (["final"] if final_ok else [])
    unknown = [e for e in exits if e not in valid]
    if unknown:
        raise ValueError(f"{method}.exits names {unknown}, not exits of this model; "
                         f"valid: {', '.join(valid)}")


def ce_terms(weight: float, views: tuple[str, ...], *, yields: bool = False) -> list[Term]:
    """Cross-entropy of the main exit on each view (``ce``, ``ce_x_lb2``, ...).

    ``yields``: the weight is a default that gives way to the same term of a method it is
    combined with (:meth:`auxilia.terms.Objective` keeps the other's).
    """
    if weight == 0:
        return []
    terms: list[Term] = [CrossEntropy("ce" if v == "x_lb" else f"ce_{v}", Ref(v), weight=weight)
                         for v in views]
    for term in terms:
        term.yields = yields
    return terms
