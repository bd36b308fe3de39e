"""Semi-supervised terms: consistency between predictions (Π-model, Mean Teacher), a per-sample
ensemble of past predictions (Temporal Ensembling), confidence-masked pseudo-labels (FixMatch,
Pseudo-Label, UDA), UDA's annealed supervised loss and MixMatch's losses on mixed batches.

Targets are always detached: gradient reaches the student's outputs, never a target's model
(an EMA teacher is the ``"ema"`` slot, run under ``no_grad``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from auxilia.losses.semi import (
    TSA_SCHEDULES,
    TSASchedule,
    linear_rampup,
    masked_cross_entropy,
    sigmoid_rampup,
    soft_cross_entropy,
    softmax_mse,
    tsa_threshold,
)
from auxilia.ranks import gather
from auxilia.terms.core import Batch, Outputs, Progress, Ref, Term

RampKind = Literal["sigmoid", "linear", "none"]


@dataclass(frozen=True)
class Ramp:
    """A ramp-up of a term's weight over the first ``length`` of training.

    Args:
        kind: ``"sigmoid"`` (``exp(−5(1 − t)²)``, Laine & Aila 2017), ``"linear"`` (MixMatch's
            λ_u) or ``"none"``.
        length: the ramp's length as a fraction of the total steps (``t = fraction / length``,
            clipped to ``[0, 1]``); 0 means no ramp.
    """

    kind: RampKind = "none"
    length: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("sigmoid", "linear", "none"):
            raise ValueError(f"unknown ramp {self.kind!r}; valid: sigmoid, linear, none")
        if self.length < 0:
            raise ValueError(f"a ramp's length must be >= 0, got {self.length}")

    def factor(self, progress: Progress) -> float:
        """The weight multiplier at ``progress``: in ``(0, 1]``, 1 once the ramp is done."""
        if self.kind == "none" or self.length <= 0:
            return 1.0
        t = progress.fraction / self.length
        return sigmoid_rampup(t) if self.kind == "sigmoid" else linear_rampup(t)


class _Ramped(Term):
    """A term whose weight is ``weight · ramp.factor(progress)``."""

    def __init__(self, name: str, weight: float, ramp: Ramp) -> None:
        super().__init__(name, weight)
        self.ramp = ramp

    def weight_at(self, progress: Progress) -> float:
        return self.weight * self.ramp.factor(progress)


class SoftmaxConsistency(_Ramped):
    """Softmax-MSE consistency between two predictions, ``(1/(B·C)) Σ (p_s − p_t)²``.

    The Π-model (Laine & Aila, ICLR 2017: two stochastic passes of the student) and Mean
    Teacher (Tarvainen & Valpola 2017: ``target`` read from the ``"ema"`` slot). With
    ``detach_target`` (the default) the target ``softmax(target logits)`` is a constant, so
    gradient reaches only the student's logits.

    Args:
        student: the student's logits ``[B, C]``.
        target: the target logits ``[B, C]`` (another view, or ``model="ema"``).
        ramp: the weight's ramp-up (the paper's ``exp(−5(1 − t)²)`` over 80 epochs).
        detach_target: stop gradient into the target (False lets a Π-model's second pass be
            trained too).
    """

    def __init__(self, name: str, student: Ref, target: Ref, weight: float = 1.0,
                 ramp: Ramp = Ramp(), detach_target: bool = True) -> None:
        super().__init__(name, weight, ramp)
        self.student, self.target, self.detach_target = student, target, detach_target

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.target)

    def options(self) -> tuple[Any, ...]:
        return (self.ramp, self.detach_target)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        target = self.target.read(outputs)
        if self.detach_target:
            target = target.detach()
        return softmax_mse(self.student.read(outputs), target.float().softmax(dim=1))


def kl_consistency_scale(num_classes: int) -> float:
    """The authors' multiplier of the KL consistency, ``2(1 − 1/C)/C²`` (0.018 at C = 10).

    Tarvainen & Valpola (2017, appendix: the cost family ``C_τ = Z_τ·KL(p_τ ‖ z_τ)``) scale the
    KL so that its gradient matches the softmax MSE's in the limit τ → 0; their TensorFlow code
    (``consistency_costs``) uses ``2(1 − 1/C)/(C²·τ²)``, τ = 1 for the plain KL.
    """
    return 2.0 * (1.0 - 1.0 / num_classes) / num_classes**2


class SoftmaxKLConsistency(SoftmaxConsistency):
    """KL consistency, ``s·(1/B) Σ_i KL(softmax(target_i) ‖ softmax(student_i))`` with
    ``s = 2(1 − 1/C)/C²`` (:func:`kl_consistency_scale`).

    Mean Teacher's KL ablation (Tarvainen & Valpola 2017, §3.2, figure 4(f), τ = 1): the
    teacher's distribution is the reference, the student's the approximation (the authors'
    code: CE(teacher, student) − H(teacher), per sample, averaged over the batch). Same
    arguments as :class:`SoftmaxConsistency`; only the distance differs.
    """

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        target = self.target.read(outputs)
        if self.detach_target:
            target = target.detach()
        log_q = self.student.read(outputs).float().log_softmax(dim=1)
        log_p = target.float().log_softmax(dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        return kl * kl_consistency_scale(log_q.shape[1])


class TemporalEnsemble(_Ramped):
    """Temporal Ensembling (Laine & Aila, ICLR 2017, Algorithm 2).

    Each sample's ensemble prediction ``Z_i`` (the buffer ``bank`` ``[N, C]``) is updated once
    per epoch, ``Z ← α·Z + (1 − α)·z`` with ``z`` the sample's softmax prediction of that epoch,
    and the target is the bias-corrected ``Z_i / (1 − α^{u_i})``, ``u_i`` (buffer ``updates``
    ``[N]``) the number of epoch updates sample i's ``Z`` received. The loss is
    ``(1/B) Σ_{i: u_i > 0} (1/C) Σ_c (softmax(student)_ic − target_ic)²``: samples never
    updated contribute 0 (the paper's zero target in the first epoch, under its ramp).

    The bank covers the samples of the unlabeled stream, indexed by ``batch[index]``, and an
    "epoch" is an epoch of that stream, not of the labeled one: predictions are collected in
    ``epoch_preds`` ``[N, C]`` / ``epoch_seen`` ``[N]`` by :meth:`after_step` (committed steps
    only; ``seen`` counts them), and the epoch is folded when the stream says it ended: the
    batch's ``epoch_end_<keys>`` flag (its last batch), or ``epoch_start_<keys>`` of the next
    epoch's first batch when the last one was a skipped step (both host booleans set by the
    engine's :class:`~auxilia.engine.batches.Batches`: no read of the device). Then every
    sample seen that epoch gets its update; the others keep their ``Z`` and count. All five
    are buffers, saved and restored with the run, so a resumed run continues exactly.

    Args:
        student: the student's logits ``[B, C]`` on the unlabeled view.
        num_samples: N, the unlabeled stream's samples.
        num_classes: C.
        alpha: the ensemble momentum α (0.6 in the paper).
        index: the batch key of the samples' indices ``[B]``.
        ramp: the weight's ramp-up (w_max 30 in the paper).
    """

    def __init__(self, name: str, student: Ref, num_samples: int, num_classes: int,
                 alpha: float = 0.6, index: str = "idx_ulb", weight: float = 1.0,
                 ramp: Ramp = Ramp()) -> None:
        super().__init__(name, weight, ramp)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"{name}: alpha must be in [0, 1), got {alpha}")
        if num_samples < 1 or num_classes < 1:
            raise ValueError(f"{name}: needs num_samples and num_classes >= 1")
        self.student, self.alpha, self.index = student, float(alpha), index
        self.bank: torch.Tensor
        self.updates: torch.Tensor
        self.epoch_preds: torch.Tensor
        self.epoch_seen: torch.Tensor
        self.seen: torch.Tensor
        self.register_buffer("bank", torch.zeros(num_samples, num_classes))
        self.register_buffer("updates", torch.zeros(num_samples, dtype=torch.long))
        self.register_buffer("epoch_preds", torch.zeros(num_samples, num_classes))
        self.register_buffer("epoch_seen", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def refs(self) -> tuple[Ref, ...]:
        return (self.student,)

    def options(self) -> tuple[Any, ...]:
        return (self.alpha, self.index, tuple(self.bank.shape), self.ramp)

    def targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bias-corrected targets ``[B, C]`` of samples ``idx`` ``[B]`` and whether each
        has one ``[B]`` (rows without an update are zero)."""
        updates = self.updates[idx]
        valid = updates > 0
        correction = 1.0 - self.alpha ** updates.to(self.bank.dtype)
        correction = torch.where(valid, correction, torch.ones_like(correction))
        return self.bank[idx] / correction[:, None], valid

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits = self.student.read(outputs).float()
        target, valid = self.targets(batch[self.index])
        per_sample = (logits.softmax(dim=1) - target).square().mean(dim=1)
        return (per_sample * valid.to(per_sample.dtype)).sum() / max(1, len(logits))

    @torch.no_grad()
    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress) -> None:
        """Record this committed step's predictions; fold them into ``Z`` at the stream's
        epoch boundary. With several processes the rows of every rank are gathered (every
        rank's bank is the one-process bank)."""
        stream = self.index.removeprefix("idx_")
        if bool(batch[f"epoch_start_{stream}"]):  # the last epoch's end was a skipped step
            self._end_epoch()
        idx = gather(batch[self.index])
        self.epoch_preds[idx] = gather(self.student.read(outputs).detach().float().softmax(1))
        self.epoch_seen[idx] = True
        self.seen += len(idx)
        if bool(batch[f"epoch_end_{stream}"]):
            self._end_epoch()

    def _end_epoch(self) -> None:
        """Fold the epoch's predictions into ``Z`` (a no-op when nothing was recorded);
        masked arithmetic, no boolean indexing, so the device is never read."""
        mask = self.epoch_seen
        folded = self.alpha * self.bank + (1.0 - self.alpha) * self.epoch_preds
        self.bank.copy_(torch.where(mask[:, None], folded, self.bank))
        self.updates += mask.long()
        self.epoch_preds.zero_()
        self.epoch_seen.zero_()
        self.seen.zero_()


class ConfidenceMaskedCE(_Ramped):
    """Cross-entropy to confident pseudo-labels, ``(1/B) Σ_i 1[max p_i ≥ τ] · CE_i``.

    ``p = softmax(target logits)``, detached and in float32. ``hard=True``: CE of the student
    to ``argmax p`` — FixMatch (Sohn et al. 2020; τ = 0.95, student on ``x_ulb_s``, target on
    ``x_ulb_w``) and Pseudo-Label (Lee 2013; student and target the same :class:`Ref`, the
    target side detached so gradient flows only through the student side). ``hard=False``: UDA
    (Xie et al. 2020): CE to the sharpened ``softmax(target logits / T)`` (T = 0.4; the same
    gradient as the KL), the mask from the unsharpened ``p`` (τ = 0.8). The division is by the
    whole batch B, not by the number of samples kept.

    Args:
        student: the student's logits ``[B, C]``.
        target: the logits ``[B, C]`` the pseudo-labels come from.
        threshold: τ.
        hard: argmax pseudo-labels (True) or sharpened soft targets (False).
        temperature: T of the soft targets (unused when ``hard``).
        ramp: the weight's ramp-up.
    """

    def __init__(self, name: str, student: Ref, target: Ref, threshold: float,
                 hard: bool = True, temperature: float = 1.0, weight: float = 1.0,
                 ramp: Ramp = Ramp("none")) -> None:
        super().__init__(name, weight, ramp)
        if temperature <= 0:
            raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
        self.student, self.target = student, target
        self.threshold, self.hard, self.temperature = float(threshold), hard, float(temperature)

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.target)

    def options(self) -> tuple[Any, ...]:
        return (self.threshold, self.hard, self.temperature, self.ramp)

    def pseudo_labels(self, outputs: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The targets (``[B]`` classes or ``[B, C]`` probabilities) and the mask ``[B]``."""
        logits = self.target.read(outputs).detach().float()
        confidence, labels = logits.softmax(dim=1).max(dim=1)
        mask = (confidence >= self.threshold).float()
        if self.hard:
            return labels, mask
        return (logits / self.temperature).softmax(dim=1), mask

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        targets, mask = self.pseudo_labels(outputs)
        return masked_cross_entropy(self.student.read(outputs), targets, mask)

    def metrics(self, outputs: Outputs, batch: Batch, progress: Progress
                ) -> dict[str, torch.Tensor]:
        """``{"mask": the share of the batch above the threshold}``."""
        _, mask = self.pseudo_labels(outputs)
        return {"mask": mask.sum() / max(1, len(mask))}


class TSACrossEntropy(Term):
    """UDA's supervised cross-entropy with training-signal annealing (Xie et al. 2020, §3.3).

    Labeled samples whose probability of the correct class exceeds η_t
    (:func:`~auxilia.losses.semi.tsa_threshold` at ``progress.fraction``) are left out:
    ``Σ_i m_i · CE_i / max(Σ_i m_i, 1)`` with ``m_i = 1[p_i(y_i) ≤ η_t]`` (the mask carries no
    gradient).

    Args:
        ref: the logits ``[B, C]`` on the labeled view.
        num_classes: K.
        schedule: ``"linear"``, ``"log"`` or ``"exp"``.
        target: the batch key of the labels ``[B]``.
    """

    def __init__(self, name: str, ref: Ref, num_classes: int, schedule: TSASchedule,
                 target: str = "y_lb", weight: float = 1.0) -> None:
        super().__init__(name, weight)
        if schedule not in TSA_SCHEDULES:
            raise ValueError(f"{name}: unknown TSA schedule {schedule!r}; valid: "
                             f"{', '.join(TSA_SCHEDULES)}")
        self.ref, self.num_classes, self.schedule, self.target = (ref, int(num_classes),
                                                                  schedule, target)

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.num_classes, self.schedule, self.target)

    def keep(self, logits: torch.Tensor, labels: torch.Tensor, progress: Progress
             ) -> torch.Tensor:
        """The mask ``[B]`` (float) of samples below the threshold."""
        eta = tsa_threshold(self.schedule, progress.fraction, self.num_classes)
        correct = logits.detach().float().softmax(dim=1).gather(1, labels[:, None])[:, 0]
        return (correct <= eta).float()

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits, labels = self.ref.read(outputs).float(), batch[self.target]
        mask = self.keep(logits, labels, progress)
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (ce * mask).sum() / mask.sum().clamp_min(1.0)

    def metrics(self, outputs: Outputs, batch: Batch, progress: Progress
                ) -> dict[str, torch.Tensor]:
        """``{"tsa_kept": the share of the batch kept}``."""
        mask = self.keep(self.ref.read(outputs), batch[self.target], progress)
        return {"tsa_kept": mask.sum() / max(1, len(mask))}


def _batch_target(term: Term, key: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    target = batch[key].detach()
    if target.shape != logits.shape:
        raise ValueError(f"{term.name}: the logits {tuple(logits.shape)} and the targets "
                         f"{key} {tuple(target.shape)} differ in shape")
    return target


class MixedTargetCE(Term):
    """Soft cross-entropy of the logits at ``ref`` against ``batch[target_key]`` ``[B, C]``:
    MixMatch's ``L_x`` on the mixed labeled batch (Berthelot et al. 2019, Eq. 3). The mixed
    targets are computed without gradient by the step strategy and put in the batch; they are
    detached here as well."""

    def __init__(self, name: str, ref: Ref, target_key: str, weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.ref, self.target_key = ref, target_key

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.target_key,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits = self.ref.read(outputs)
        return soft_cross_entropy(logits, _batch_target(self, self.target_key, logits, batch))


class MixedTargetMSE(_Ramped):
    """Softmax MSE of the logits at ``ref`` against ``batch[target_key]`` ``[B, C]``:
    MixMatch's ``L_u = 1/(C·|U'|) Σ ‖q − p‖²`` on the mixed unlabeled batch (Berthelot et al.
    2019, Eq. 4), its λ_u ramped linearly (over 16,384 steps in the paper). The targets come
    from the step strategy and are detached here as well."""

    def __init__(self, name: str, ref: Ref, target_key: str, weight: float = 1.0,
                 ramp: Ramp = Ramp()) -> None:
        super().__init__(name, weight, ramp)
        self.ref, self.target_key = ref, target_key

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.target_key, self.ramp)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits = self.ref.read(outputs)
        return softmax_mse(logits, _batch_target(self, self.target_key, logits, batch))
