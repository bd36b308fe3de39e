"""Terms and objectives: a method is a set of weighted losses that read model outputs by reference.

A :class:`Term` is an ``nn.Module`` (so state such as prediction banks is checkpointed with the
run) that names the outputs it reads as :class:`Ref` s. An :class:`Objective` is a named set of
terms plus the heads and views they need; objectives combine with ``|``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auxilia.losses import cross_entropy
from auxilia.models.heads import HeadSpec
from auxilia.parts import (
    DEFAULT_STREAMS,
    STUDENT,
    OneBackward,
    OptimizerSpec,
    Progress,
    Slot,
    StepStrategy,
    StreamSpec,
)

DEFAULT_VIEW = "weak"
SOFT_VIEWS = {DEFAULT_VIEW: 0, "noisy": 1, "randaugment": 1}
"""Views a recipe asks for when any augmentation of that kind will do: combined with a recipe
asking for a specific view of the same key, that one wins ("weak": any augmentation; "noisy":
Mean Teacher's noise, "randaugment": Noisy Student's, which a specific augmentation such as
CDS's replaces)."""

Batch = Mapping[str, torch.Tensor]
# outputs[(model, view)][exit][field]
Outputs = Mapping[tuple[str, str], Mapping[str, Mapping[str, torch.Tensor]]]


@dataclass(frozen=True)
class Ref:
    """A reference to one output tensor: ``model`` run on ``view``, at ``exit``, field ``field``."""

    view: str
    exit: str = "final"
    field: str = "logits"
    model: str = "student"

    def read(self, outputs: Outputs) -> torch.Tensor:
        """Fetch the tensor, or fail naming what is there instead."""
        by_view = outputs.get((self.model, self.view))
        if by_view is None:
            raise KeyError(f"no outputs of {self.model} on view {self.view!r}; "
                           f"computed: {sorted(outputs)}")
        if self.exit not in by_view:
            raise KeyError(f"{self.model} has no exit {self.exit!r}; exits: {sorted(by_view)}")
        fields = by_view[self.exit]
        if self.field not in fields:
            raise KeyError(f"exit {self.exit!r} has no {self.field!r} output (no such head "
                           f"attached); fields: {sorted(fields)}")
        return fields[self.field]


class Term(nn.Module):
    """One weighted loss. Subclasses implement :meth:`compute` and list their :meth:`refs`.

    ``yields``: a default term that gives way to a term of the same name from a method it is
    combined with (``kd``'s CE at 0.1 beside ``cds``'s at 1.0 becomes ``cds``'s), instead of the
    combination being refused.
    """

    yields: bool = False

    def __init__(self, name: str, weight: float = 1.0) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)

    def refs(self) -> tuple[Ref, ...]:
        raise NotImplementedError

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        raise NotImplementedError

    def weight_at(self, progress: Progress) -> float:
        """The weight at this point of training (constant here; ramps override it)."""
        return self.weight

    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress) -> None:
        """Update the term's state (banks, running thresholds) from a committed step.

        Called once the optimizer step that used ``outputs`` was taken, never for a skipped
        step: ``compute`` must not mutate state, or a non-finite batch could poison it.
        """

    def on_epoch_end(self, epoch: int) -> None:
        """Called when the labeled stream finishes epoch ``epoch`` (0-based)."""

    def metrics(self, outputs: Outputs, batch: Batch, progress: Progress
                ) -> dict[str, torch.Tensor]:
        """Detached numbers worth logging beside the loss (the share of a batch above a
        confidence threshold), logged as ``<term name>/<key>``; not part of the loss."""
        return {}

    def signature(self) -> tuple[Any, ...]:
        """What makes two terms the same term: type, weight, references and options."""
        return (type(self).__name__, self.weight, self.refs(), self.options())

    def options(self) -> tuple[Any, ...]:
        return ()


class CrossEntropy(Term):
    """Cross-entropy of the logits at ``ref`` against the labels ``batch[target]``."""

    def __init__(self, name: str, ref: Ref, target: str = "y_lb", weight: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(name, weight)
        self.ref = ref
        self.target = target
        self.label_smoothing = label_smoothing

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.target, self.label_smoothing)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        return cross_entropy(self.ref.read(outputs), batch[self.target], self.label_smoothing)


class Objective(nn.Module):
    """A named set of terms, with the heads, views, model slots, streams, optimizers and step
    strategy they need.

    Args:
        terms: the weighted losses; names must be unique.
        heads: heads the terms read (attached to their ``model`` slot before training).
        views: batch key → view recipe name, e.g. ``{"x_lb": "weak"}``. ``"weak"`` means "any
            augmentation will do": combined with a recipe asking for a specific one, that wins.
        slots: models besides the student, by name (:mod:`auxilia.parts`).
        streams: index streams besides ``labeled``, by name.
        optimizers: named optimizers; by default one, ``main``, over everything trainable.
        step: the step strategy; by default :class:`~auxilia.parts.OneBackward`.
        deploy: the slot that is the run's model: evaluated as ``val/...``, selected on
            validation, saved as the checkpoint's ``model`` and exported (an EMA slot for Mean
            Teacher); None: the student.
    """

    def __init__(self, terms: Sequence[Term] = (), heads: Sequence[HeadSpec] = (),
                 views: Mapping[str, str] | None = None, *,
                 slots: Mapping[str, Slot] | None = None,
                 streams: Mapping[str, StreamSpec] | None = None,
                 optimizers: Mapping[str, OptimizerSpec] | None = None,
                 step: StepStrategy | None = None, deploy: str | None = None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict()
        self.heads: dict[str, HeadSpec] = {}
        self.views: dict[str, str] = {}
        self.slots: dict[str, Slot] = {}
        self.streams: dict[str, StreamSpec] = dict(DEFAULT_STREAMS)
        self.optimizers: dict[str, OptimizerSpec] = {}
        self.step: StepStrategy = OneBackward()
        self.deploy: str | None = None
        for term in terms:
            self._add_term(term)
        for spec in heads:
            self._add_head(spec)
        for key, recipe in (views or {}).items():
            self._add_view(key, recipe)
        self._add_parts(slots or {}, streams or {}, optimizers or {}, step)
        self._set_deploy(deploy)

    @property
    def threshold(self) -> float:
        """The confidence threshold of the objective's pseudo-labels (its first term with a
        ``threshold``), for reporting the share of unlabeled samples above it; 0.95 else."""
        for term in self.terms.values():
            value = getattr(term, "threshold", None)
            if isinstance(value, float | int) and not isinstance(value, bool):
                return float(value)
        return 0.95

    @property
    def deployed(self) -> str:
        """The slot evaluated, selected and exported as the run's model."""
        return self.deploy or STUDENT

    def _set_deploy(self, deploy: str | None) -> None:
        if deploy is None:
            return
        if self.deploy is not None and self.deploy != deploy:
            raise ValueError(f"two methods deploy different models ({self.deploy!r} and "
                             f"{deploy!r}); set the methods' deploy options to agree")
        if deploy != STUDENT and deploy not in self.slots:
            raise ValueError(f"deploy names slot {deploy!r}, which is not declared; slots: "
                             f"{', '.join([STUDENT, *self.slots])}")
        self.deploy = deploy

    def _add_term(self, term: Term) -> None:
        if term.name in self.terms:
            old = self.terms[term.name]
            if old.signature() == term.signature() or term.yields:  # type: ignore[operator]
                return  # the same term, or a default that gives way to the one there
            if old.yields:  # type: ignore[truthy-function]
                self.terms[term.name] = term
                return
            if old.signature() != term.signature():  # type: ignore[operator]
                raise ValueError(
                    f"two methods define a term {term.name!r} differently: {old.signature()} vs "
                    f"{term.signature()}; give both methods the same settings (e.g. the same "
                    "ce_weight) so that they share it")
            return
        self.terms[term.name] = term

    def _add_head(self, spec: HeadSpec) -> None:
        key = spec.key if spec.model == STUDENT else f"{spec.model}/{spec.key}"
        old = self.heads.get(key)
        if old is not None and old != spec:
            raise ValueError(f"two recipes want different {spec.field!r} heads on exit "
                             f"{spec.exit!r} of {spec.model}: {old} vs {spec}")
        self.heads[key] = spec

    def _add_view(self, key: str, recipe: str) -> None:
        old = self.views.get(key)
        if old is None or old == recipe:
            self.views[key] = recipe
            return
        rank_old, rank_new = SOFT_VIEWS.get(old), SOFT_VIEWS.get(recipe)
        if rank_old is None and rank_new is None:
            raise ValueError(f"two recipes want view {key!r} augmented differently: "
                             f"{old!r} vs {recipe!r}")
        # a soft request gives way to a specific view, and "weak" to "noisy"
        if rank_old is not None and (rank_new is None or rank_new > rank_old):
            self.views[key] = recipe

    def _add_parts(self, slots: Mapping[str, Slot], streams: Mapping[str, StreamSpec],
                   optimizers: Mapping[str, OptimizerSpec], step: StepStrategy | None) -> None:
        """Merge named parts: one name, one meaning (else the combination is refused)."""
        if STUDENT in slots:
            raise ValueError("'student' is the model being trained; name the slot otherwise")
        for kind, mine, theirs in (("slot", self.slots, slots),
                                   ("stream", self.streams, streams),
                                   ("optimizer", self.optimizers, optimizers)):
            for name, part in theirs.items():
                if name in mine and mine[name] != part:
                    if getattr(part, "yields", False):
                        continue  # a default that gives way to the one there
                    if getattr(mine[name], "yields", False):
                        mine[name] = part  # type: ignore[index]
                        continue
                    raise ValueError(f"two methods define {kind} {name!r} differently: "
                                     f"{mine[name]} vs {part}")
                mine[name] = part  # type: ignore[index]
        if step is not None and step != OneBackward():
            if self.step != OneBackward() and self.step != step:
                raise ValueError(f"two methods replace the training step ({self.step!r} and "
                                 f"{step!r}); they cannot be combined")
            self.step = step

    def __or__(self, other: Objective) -> Objective:
        combined = Objective(list(self.terms.values()), list(self.heads.values()), self.views,
                             slots=self.slots, streams=self.streams,
                             optimizers=self.optimizers, step=self.step)
        for term in other.terms.values():
            combined._add_term(term)  # type: ignore[arg-type]
        for spec in other.heads.values():
            combined._add_head(spec)
        for key, recipe in other.views.items():
            combined._add_view(key, recipe)
        combined._add_parts(other.slots, other.streams, other.optimizers, other.step)
        combined._set_deploy(self.deploy)
        combined._set_deploy(other.deploy)
        return combined

    def inputs(self) -> dict[str, list[str]]:
        """Model name → the views it must be run on, in a stable order."""
        wanted: dict[str, list[str]] = {}
        for term in self.terms.values():
            for ref in term.refs():  # type: ignore[operator]
                views = wanted.setdefault(ref.model, [])
                if ref.view not in views:
                    views.append(ref.view)
        return wanted

    def heads_of(self, model: str) -> list[HeadSpec]:
        """The heads to attach to slot ``model``."""
        return [spec for spec in self.heads.values() if spec.model == model]

    def forward(self, outputs: Outputs, batch: Batch, progress: Progress
                ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": Σ w·term, <term name>: unweighted value, ...}``.

        Pure: no term's state changes here (see :meth:`after_step`).
        """
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, term in self.terms.items():
            value = term.compute(outputs, batch, progress)
            parts[name] = value.detach()
            for key, metric in term.metrics(outputs, batch, progress).items():  # type: ignore[operator]
                parts[f"{name}/{key}"] = metric.detach()
            weighted = term.weight_at(progress) * value
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("the objective has no terms")
        return {"loss": total, **parts}

    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress,
                   committed: Collection[str] | None = None) -> None:
        """Every term's :meth:`Term.after_step`, once the step was committed.

        Args:
            committed: the models whose step was committed (all when None); a term whose
                references read another model keeps its state (a step with two optimizers
                may commit one half).
        """
        for term in self.terms.values():
            if committed is None or all(ref.model in committed for ref in term.refs()):
                term.after_step(outputs, batch, progress)  # type: ignore[operator]

    def on_epoch_end(self, epoch: int) -> None:
        for term in self.terms.values():
            term.on_epoch_end(epoch)  # type: ignore[operator]
