"""The terms of Meta Pseudo Labels (Pham et al., CVPR 2021) that read the teacher's pseudo-labels.

* :class:`PseudoLabels`: how a hard pseudo-label is drawn from the teacher's strong-view logits
  (sampled from the softmax, as the paper's derivation assumes, or its argmax); seeded by the
  run's seed and the step, so the student's term and the teacher's feedback term draw the same
  labels, and a resumed run draws what the uninterrupted one did.
* :class:`StudentPseudoCE`: the student's cross-entropy on the strong view to those labels.
* :class:`FeedbackCE`: the teacher's cross-entropy on the strong view to the same labels, which
  the step strategy multiplies by the feedback ``h``; it keeps the moving-average baseline of
  ``h`` as a buffer (saved and restored with the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from auxilia.losses import cross_entropy
from auxilia.parts import Progress
from auxilia.seeding import derive_seed, seeded
from auxilia.terms import Batch, ConfidenceMaskedCE, Outputs, Ref, Term

Sampling = Literal["sample", "argmax"]
FEEDBACK_VIEW = "mpl_feedback"
"""The pseudo-view under which the step strategy hands the committed step's raw feedback
``CE_old − CE_new`` to :meth:`FeedbackCE.after_step` (``outputs[(teacher, FEEDBACK_VIEW)]``)."""


@dataclass(frozen=True)
class PseudoLabels:
    """Hard pseudo-labels ``[B]`` from teacher logits ``[B, C]``.

    Args:
        mode: ``sample`` draws ``ŷ ~ softmax(logits)`` (the paper, §3.1: the score-function
            gradient needs a sampled label); ``argmax`` takes the most likely class (the
            released code and kekmodel's port).
        seed: the run's seed; each step draws from ``derive_seed(seed, "mpl_labels", step)``.
    """

    mode: Sampling = "sample"
    seed: int = 0

    def draw(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """The labels of one step: Gumbel-max sampling (``argmax(logits + G)``, G Gumbel(0, 1)
        noise, an exact draw from the softmax made of device operations only) or argmax."""
        logits = logits.detach().float()
        if self.mode == "argmax":
            return logits.argmax(dim=1)
        with seeded(derive_seed(self.seed, "mpl_labels", step), logits.device):
            uniform = torch.rand(logits.shape, device=logits.device)
        tiny = torch.finfo(uniform.dtype).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
        return (logits + gumbel).argmax(dim=1)


class StudentPseudoCE(ConfidenceMaskedCE):
    """The student's loss in MPL: ``CE(S(x_ulb_s), ŷ)`` with ``ŷ`` drawn from the teacher's
    logits on the same strong view (no confidence mask: every sample counts), with optional
    label smoothing (kekmodel: 0.15). Gradient reaches the student only: the teacher's logits
    are detached.

    Args:
        student: the student's logits ``[B, C]`` on the strong unlabeled view.
        teacher: the teacher's logits ``[B, C]`` on the same view.
        labels: how the pseudo-labels are drawn.
        label_smoothing: ε of the student's CE.
    """

    def __init__(self, name: str, student: Ref, teacher: Ref, labels: PseudoLabels,
                 label_smoothing: float = 0.0, weight: float = 1.0) -> None:
        super().__init__(name, student, teacher, threshold=0.0, weight=weight)
        self.labels, self.label_smoothing = labels, float(label_smoothing)

    def options(self) -> tuple[Any, ...]:
        return (*super().options(), self.labels, self.label_smoothing)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        labels = self.labels.draw(self.target.read(outputs), progress.step)
        return cross_entropy(self.student.read(outputs), labels, self.label_smoothing)

    def metrics(self, outputs: Outputs, batch: Batch, progress: Progress
                ) -> dict[str, torch.Tensor]:
        return {}


class FeedbackCE(Term):
    """The teacher's MPL term: ``CE(T(x_ulb_s), ŷ)`` with the student's labels ``ŷ``; the step
    multiplies it by ``h`` (:meth:`feedback`), so its gradient is ``h · ∇_T CE(T(x_ulb_s), ŷ)``.

    ``h = (CE_old − CE_new) − b``: the drop of the student's labeled cross-entropy across its
    step on ``ŷ``, minus the moving average ``b`` of earlier drops (a REINFORCE baseline: it
    lowers the variance and leaves the expected gradient unchanged). ``b`` is a buffer
    updated from committed steps only, ``b ← decay·b + (1 − decay)·(CE_old − CE_new)``, after
    ``h`` used the old ``b`` (so the baseline never depends on this step's labels).

    Args:
        teacher: the teacher's logits ``[B, C]`` on the strong unlabeled view.
        labels: the same draw as the student's term.
        baseline_decay: the baseline's decay (0.99 as released); 1 keeps ``b = 0``.
    """

    def __init__(self, name: str, teacher: Ref, labels: PseudoLabels, weight: float = 1.0,
                 baseline_decay: float = 0.99) -> None:
        super().__init__(name, weight)
        if not 0.0 <= baseline_decay <= 1.0:
            raise ValueError(f"{name}: baseline_decay must be in [0, 1], got {baseline_decay}")
        self.teacher, self.labels, self.baseline_decay = teacher, labels, float(baseline_decay)
        self.baseline: torch.Tensor
        self.register_buffer("baseline", torch.zeros(()))

    def refs(self) -> tuple[Ref, ...]:
        return (self.teacher,)

    def options(self) -> tuple[Any, ...]:
        return (self.labels, self.baseline_decay)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits = self.teacher.read(outputs)
        return cross_entropy(logits, self.labels.draw(logits, progress.step))

    def feedback(self, drop: torch.Tensor) -> torch.Tensor:
        """``h = drop − b`` with ``drop = CE_old − CE_new``, detached, on the device (no host
        read)."""
        return drop.detach().float() - self.baseline

    @torch.no_grad()
    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress) -> None:
        """Fold a committed step's drop ``CE_old − CE_new`` into the baseline (absent during
        the student's wait steps, when the student did not step)."""
        found = outputs.get((self.teacher.model, FEEDBACK_VIEW))
        if found is None:
            return
        drop = found["final"]["drop"]
        self.baseline.mul_(self.baseline_decay).add_((1.0 - self.baseline_decay) * drop)
