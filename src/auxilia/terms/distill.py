"""Terms where one output teaches another: KD between exits or views, feature hints,
feature-distribution matching, and a per-sample bank of past predictions (PS-KD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from auxilia.losses import cross_entropy, kd_kl, mean_difference, mmd
from auxilia.terms.core import Batch, Outputs, Progress, Ref, Term


class KLDistill(Term):
    """``T² · KL(p_teacher^T ‖ p_student^T)`` (batchmean) with the teacher's logits detached.

    Used for BYOT (deepest exit teaches the shallow ones), DDGSD (each view teaches the
    other) and, later, teacher networks.
    """

    def __init__(self, name: str, student: Ref, teacher: Ref, temperature: float,
                 weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.student, self.teacher, self.temperature = student, teacher, temperature

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.teacher)

    def options(self) -> tuple[Any, ...]:
        return (self.temperature,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        target = self.teacher.read(outputs).detach()
        return kd_kl(self.student.read(outputs), target, self.temperature)


class FeatureL2(Term):
    """Squared L2 distance between a feature and a detached target feature: summed over the
    feature dimensions, averaged over the batch (BYOT's feature hint, Zhang et al. 2019)."""

    def __init__(self, name: str, student: Ref, target: Ref, weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.student, self.target = student, target

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.target)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        diff = self.student.read(outputs).float() - self.target.read(outputs).detach().float()
        return diff.pow(2).flatten(1).sum(dim=1).mean()


class Discrepancy(Term):
    """Distribution distance between two feature sets ``[B, D]`` (DDGSD, Xu & Liu 2019).

    ``kind="mmd"``: Gaussian-kernel MMD; ``kind="mean_difference"``: squared distance of the
    feature means. Gradients flow into both sides.
    """

    def __init__(self, name: str, a: Ref, b: Ref, kind: str = "mmd", weight: float = 1.0) -> None:
        super().__init__(name, weight)
        if kind not in ("mmd", "mean_difference"):
            raise ValueError(f"unknown discrepancy {kind!r}; valid: mmd, mean_difference")
        self.a, self.b, self.kind = a, b, kind

    def refs(self) -> tuple[Ref, ...]:
        return (self.a, self.b)

    def options(self) -> tuple[Any, ...]:
        return (self.kind,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        x, y = self.a.read(outputs).float(), self.b.read(outputs).float()
        return mmd(x, y) if self.kind == "mmd" else mean_difference(x, y)


class PredictionBankCE(Term):
    """Progressive self-knowledge distillation (PS-KD, Kim et al. 2021).

    Target of sample i at epoch t: ``(1 − α_t)·onehot(y_i) + α_t·p_i^{t−1}``, where
    ``p_i^{t−1}`` is the sample's softmax prediction from its previous visit (the previous
    epoch), kept in a bank indexed by ``batch[index_key]`` and written after each committed
    step (:meth:`after_step`), and ``α_t = α_T·(t+1)/T``.
    Samples never seen yet get the plain one-hot target. The bank is a buffer, so it is saved
    and restored with the run.

    Args:
        num_samples: rows of the bank (labeled training samples).
        num_classes: columns of the bank.
        alpha_max: α_T, reached at the last epoch (0.8 in the paper).
    """

    def __init__(self, name: str, ref: Ref, num_samples: int, num_classes: int,
                 alpha_max: float = 0.8, target: str = "y_lb", index_key: str = "idx_lb",
                 weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.ref, self.alpha_max, self.target, self.index_key = ref, alpha_max, target, index_key
        self.register_buffer("bank", torch.zeros(num_samples, num_classes))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)

    def options(self) -> tuple[Any, ...]:
        return (self.alpha_max, self.target, self.index_key, tuple(self.bank.shape))

    def alpha(self, progress: Progress) -> float:
        epochs = max(1.0, progress.total_steps / max(1, progress.steps_per_epoch))
        return self.alpha_max * (int(progress.epoch) + 1) / epochs

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        logits = self.ref.read(outputs).float()
        idx, labels = batch[self.index_key], batch[self.target]
        onehot = F.one_hot(labels, logits.shape[1]).float()
        alpha = self.alpha(progress) * self.seen[idx].float()[:, None]
        target = (1.0 - alpha) * onehot + alpha * self.bank[idx]
        return cross_entropy(logits, target)

    @torch.no_grad()
    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress) -> None:
        """Store this step's predictions: only a committed step writes the bank, so a
        skipped non-finite batch leaves its rows as they were."""
        idx = batch[self.index_key]
        self.bank[idx] = self.ref.read(outputs).detach().float().softmax(dim=1)
        self.seen[idx] = True
