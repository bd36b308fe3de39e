"""Terms where one output teaches another: KD between exits, views or networks, soft-target CE,
feature hints (BYOT, FitNet), projection distances (CDS's distillation), peer similarity
(DoGo), feature-distribution matching, and a per-sample bank of past predictions (PS-KD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auxilia.losses import cross_entropy, kd_kl, mean_difference, mmd
from auxilia.losses.contrastive import view_major_rows
from auxilia.losses.metric import _matmul_t as matmul_t_fp32
from auxilia.ranks import current, gather, gather_with_grad
from auxilia.seeding import seeded
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
        skipped non-finite batch leaves its rows as they were. With several processes the
        rows of every rank are gathered, so every rank's bank is the one-process bank."""
        idx = gather(batch[self.index_key])
        self.bank[idx] = gather(self.ref.read(outputs).detach().float().softmax(dim=1))
        self.seen[idx] = True


class SoftTargetCE(Term):
    """Soft-target cross-entropy at temperature T, as the CDS paper's distillation computes it:
    ``−(1/B) Σ_b Σ_k softmax(t/T)_bk · log_softmax(s/T)_bk``, the teacher detached, with no T²
    factor (unlike :class:`KLDistill`; the two differ by the teacher's entropy and T²)."""

    def __init__(self, name: str, student: Ref, teacher: Ref, temperature: float,
                 weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.student, self.teacher, self.temperature = student, teacher, temperature

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.teacher)

    def options(self) -> tuple[Any, ...]:
        return (self.temperature,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        t = self.teacher.read(outputs).detach().float() / self.temperature
        return cross_entropy(self.student.read(outputs).float() / self.temperature,
                             t.softmax(dim=1))


class HintMSE(Term):
    """FitNet's hint (Romero et al., ICLR 2015): mean squared error between the student's
    regressed feature ``[B, C_t, H_t, W_t]`` and the teacher's detached feature, averaged over
    every element (``nn.MSELoss()``, as the CIFAR distillation benchmarks weight it by 100)."""

    def __init__(self, name: str, student: Ref, teacher: Ref, weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.student, self.teacher = student, teacher

    def refs(self) -> tuple[Ref, ...]:
        return (self.student, self.teacher)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        s, t = self.student.read(outputs).float(), self.teacher.read(outputs).detach().float()
        if s.shape != t.shape:
            raise ValueError(f"{self.name}: the student's hint {tuple(s.shape)} and the "
                             f"teacher's feature {tuple(t.shape)} differ in shape")
        return F.mse_loss(s, t)


class ProjectionDistance(Term):
    """The CDS paper's feature distillation: ``‖P_t − A(P_s)‖₂``, the Euclidean (Frobenius)
    distance between the teacher's and the student's normalised projections over the whole
    batch of every view (``torch.dist(t, s, p=2)`` in its public code, not squared, not averaged),
    the teacher detached. ``A`` is a learned linear adaptation when the widths differ, owned by
    this term (so it is in the optimizer and never in an export).

    Args:
        student: the student's projections, one :class:`Ref` per view ``[B, D_s]``.
        teacher: the teacher's, on the same views ``[B, D_t]``.
        student_dim: ``D_s``.
        teacher_dim: ``D_t``.
        init_seed: the stream the adaptation layer is initialised from.
    """

    def __init__(self, name: str, student: tuple[Ref, ...], teacher: tuple[Ref, ...],
                 student_dim: int, teacher_dim: int, init_seed: int = 0,
                 weight: float = 1.0) -> None:
        super().__init__(name, weight)
        if len(student) != len(teacher):
            raise ValueError(f"{name}: {len(student)} student views vs {len(teacher)} teacher's")
        self.student, self.teacher = student, teacher
        self.dims = (student_dim, teacher_dim)
        self.adapt: nn.Module = nn.Identity()
        if student_dim != teacher_dim:
            with seeded(init_seed):
                self.adapt = nn.Linear(student_dim, teacher_dim)

    def refs(self) -> tuple[Ref, ...]:
        return (*self.student, *self.teacher)

    def options(self) -> tuple[Any, ...]:
        return self.dims

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        s = torch.cat([r.read(outputs) for r in self.student]).float()
        t = torch.cat([r.read(outputs) for r in self.teacher]).detach().float()
        return (t - self.adapt(s)).flatten().norm(p=2)


class SimilarityKL(Term):
    """Distill on the Go's peer-similarity loss (Bhat et al., 2021): each row of the cosine
    similarity matrix of a model's projections (self-pairs excluded), softmaxed at τ, matches
    the same row of the detached peer's: ``(1/N) Σ_i KL(q_i ‖ p_i)`` over the ``N`` samples of
    all views, ``p`` the student's and ``q`` the peer's distributions.

    With several processes (``torchrun``), every rank's projections are gathered (the
    student's with gradient), a rank's rows are its own samples in every view against the
    columns of the whole global batch, and its loss is the mean over its rows: DDP's average
    over ranks is then exactly the one-process loss (every rank holds as many rows).

    Args:
        student: the projections trained here, one :class:`Ref` per view ``[B, D]``.
        peer: the peer's projections on the same views (detached).
        temperature: τ (0.1 in the paper).
    """

    def __init__(self, name: str, student: tuple[Ref, ...], peer: tuple[Ref, ...],
                 temperature: float = 0.1, weight: float = 1.0) -> None:
        super().__init__(name, weight)
        self.student, self.peer, self.temperature = student, peer, temperature

    def refs(self) -> tuple[Ref, ...]:
        return (*self.student, *self.peer)

    def options(self) -> tuple[Any, ...]:
        return (self.temperature,)

    def compute(self, outputs: Outputs, batch: Batch, progress: Progress) -> torch.Tensor:
        student = [gather_with_grad(r.read(outputs)) for r in self.student]
        rows = _own_rows(len(student[0]), len(student))
        log_p = _similarity_log_probs(torch.cat(student), self.temperature, rows)
        with torch.no_grad():
            log_q = _similarity_log_probs(torch.cat([gather(r.read(outputs)) for r in self.peer]),
                                          self.temperature, rows)
        q = log_q.exp()
        return (q * (log_q - log_p)).masked_fill(q == 0, 0.0).sum(dim=1).mean()


def _own_rows(total: int, views: int) -> torch.Tensor | None:
    """This rank's rows of ``views`` concatenated global batches of ``total`` rows (None: one
    process, every row)."""
    ranks = current()
    return view_major_rows(ranks.rows(total), total, views) if ranks.several else None


def _similarity_log_probs(z: torch.Tensor, temperature: float,
                          rows: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise log-softmax of ``cos(z_i, z_j)/τ`` with ``j ≠ i`` (the diagonal gets −inf),
    for the rows ``rows`` (all by default) against every column.

    The product is taken in float32 with autocast off, like every other loss's: under bf16
    autocast a cosine near 1 divided by τ = 0.1 would lose about 0.04 to rounding, more than
    the similarity differences the loss matches."""
    z = F.normalize(z.float(), dim=1)
    own = torch.arange(len(z), device=z.device) if rows is None else rows.to(z.device)
    anchors = z if rows is None else z[own]
    sim = matmul_t_fp32(anchors, z)[2] / temperature
    self_pair = own[:, None] == torch.arange(len(z), device=z.device)[None, :]
    return sim.masked_fill(self_pair, float("-inf")).log_softmax(dim=1)
