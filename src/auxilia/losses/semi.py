"""Semi-supervised losses and schedules: sharpening and MixUp (MixMatch), softmax MSE
(Π-model, Temporal Ensembling, Mean Teacher), soft and masked cross-entropy (FixMatch, UDA,
Pseudo-Label), consistency ramps and UDA's training-signal annealing.

Pure functions: no state, no in-place change of their inputs. Random draws (:func:`mixup`) come
from the global torch RNG, so a seeded run reproduces them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

TSASchedule = Literal["linear", "log", "exp"]
TSA_SCHEDULES: tuple[str, ...] = ("linear", "log", "exp")


def _float(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening of MixMatch (Berthelot et al. 2019, Eq. 7).

    ``Sharpen(p, T)_c = p_c^{1/T} / Σ_k p_k^{1/T}``, computed as ``softmax(log p / T)`` so that a
    small T neither underflows nor divides 0 by 0 (zero entries stay zero).

    Args:
        p: ``[B, C]`` probabilities (rows summing to 1).
        temperature: T > 0; T = 1 is the identity, T → 0 gives the one-hot of the argmax.

    Returns:
        ``[B, C]`` probabilities, in float32 at least.
    """
    if temperature <= 0:
        raise ValueError(f"sharpen needs a temperature > 0, got {temperature}")
    return (_float(p).log() / temperature).softmax(dim=1)


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp as MixMatch uses it (Berthelot et al. 2019, Eqs. 8–11; Zhang et al. 2018).

    One ``λ ~ Beta(α, α)`` per call, ``λ' = max(λ, 1 − λ)`` (so each mixed row stays closer to
    its own sample), and one random permutation of the rows; both drawn from the global torch
    RNG. ``x' = λ'·x + (1 − λ')·x[perm]`` and the same for the targets.

    Args:
        x: ``[N, ...]`` inputs (MixMatch passes the labeled and unlabeled views concatenated).
        targets: ``[N, C]`` target probabilities.
        alpha: α > 0 of the Beta distribution (0.75 in MixMatch).

    Returns:
        ``(x_mixed [N, ...], targets_mixed [N, C], λ')`` with ``λ' ∈ [0.5, 1]`` a float.
    """
    if alpha <= 0:
        raise ValueError(f"mixup needs alpha > 0, got {alpha}")
    if len(x) != len(targets):
        raise ValueError(f"mixup: {len(x)} inputs vs {len(targets)} targets")
    concentration = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x)).to(x.device)
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_t = lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]
    return mixed_x, mixed_t, lam


def softmax_mse(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Squared error between the predicted and the target probabilities, averaged over the
    batch and the classes.

    ``(1/(B·C)) Σ_i Σ_c (softmax(logits)_ic − t_ic)²``: the Π-model's and Temporal Ensembling's
    consistency (Laine & Aila, ICLR 2017), Mean Teacher's ``softmax_mse_loss / C / B``
    (Tarvainen & Valpola 2017) and MixMatch's ``L_u = 1/(C·|U'|) Σ ‖q − p‖²``. Nothing is
    detached here: the caller detaches the target.

    Args:
        logits: ``[B, C]``.
        target_probs: ``[B, C]`` probabilities.

    Returns:
        Scalar, computed in float32 (float64 inputs stay float64).
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"softmax_mse: logits {tuple(logits.shape)} vs targets "
                         f"{tuple(target_probs.shape)}")
    return (_float(logits).softmax(dim=1) - _float(target_probs)).square().mean()


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets, ``−(1/B) Σ_i Σ_c t_ic · log softmax(logits)_ic``
    (MixMatch's ``L_x`` on mixed labels, Berthelot et al. 2019).

    Args:
        logits: ``[B, C]``.
        target_probs: ``[B, C]`` probabilities (not detached here).

    Returns:
        Scalar, computed in float32 (float64 inputs stay float64).
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"soft_cross_entropy: logits {tuple(logits.shape)} vs targets "
                         f"{tuple(target_probs.shape)}")
    log_p = _float(logits).log_softmax(dim=1)
    return -(_float(target_probs) * log_p).sum(dim=1).mean()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
                         ) -> torch.Tensor:
    """Per-sample cross-entropy weighted by a mask and divided by the whole batch size.

    ``(1/B) Σ_i mask_i · CE_i``, as FixMatch (Sohn et al. 2020, Eq. 4) and UDA (Xie et al.
    2020) do: the division is by the unlabeled batch, not by the number of samples kept, so
    the loss shrinks while few pseudo-labels pass the threshold.

    Args:
        logits: ``[B, C]``.
        targets: ``[B]`` int64 class indices or ``[B, C]`` probabilities.
        mask: ``[B]`` weights (0/1 for a confidence threshold).

    Returns:
        Scalar, computed in float32 (float64 inputs stay float64); 0 for an empty batch.
    """
    logits = _float(logits)
    if targets.is_floating_point():
        targets = targets.to(logits.dtype)
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * mask.to(ce.dtype)).sum() / max(1, len(logits))


def sigmoid_rampup(t: float) -> float:
    """The Gaussian ramp-up of Laine & Aila (ICLR 2017): ``exp(−5 (1 − t)²)`` with ``t``
    clipped to ``[0, 1]`` (``exp(−5)`` at the start, 1 from ``t = 1`` on).

    Args:
        t: the share of the ramp done.
    """
    t = min(1.0, max(0.0, float(t)))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(t: float) -> float:
    """A linear ramp, ``t`` clipped to ``[0, 1]`` (MixMatch's λ_u over its first 16k steps).

    Args:
        t: the share of the ramp done.
    """
    return min(1.0, max(0.0, float(t)))


def tsa_threshold(schedule: TSASchedule, t: float, num_classes: int) -> float:
    """The threshold of UDA's training-signal annealing (Xie et al. 2020, §3.3).

    ``η_t = α_t · (1 − 1/K) + 1/K`` with ``α_t = t`` (``"linear"``), ``1 − exp(−5t)``
    (``"log"``) or ``exp(5(t − 1))`` (``"exp"``), ``t`` the share of training done, clipped to
    ``[0, 1]``. Labeled samples whose probability of the correct class exceeds η_t leave the
    supervised loss. ``"linear"`` runs from exactly 1/K to 1; as in the paper and UDA's code,
    ``"log"`` ends and ``"exp"`` starts ``e^{−5}(1 − 1/K)`` (< 0.007) short of those ends.

    Args:
        schedule: ``"linear"``, ``"log"`` or ``"exp"``.
        t: the share of training done.
        num_classes: K.

    Returns:
        η_t in ``[1/K, 1]``.
    """
    if num_classes < 1:
        raise ValueError(f"tsa_threshold needs num_classes >= 1, got {num_classes}")
    t = min(1.0, max(0.0, float(t)))
    if schedule == "linear":
        a = t
    elif schedule == "log":
        a = 1.0 - math.exp(-5.0 * t)
    elif schedule == "exp":
        a = math.exp(5.0 * (t - 1.0))
    else:
        raise ValueError(f"unknown TSA schedule {schedule!r}; valid: {', '.join(TSA_SCHEDULES)}")
    start = 1.0 / num_classes
    return a * (1.0 - start) + start
