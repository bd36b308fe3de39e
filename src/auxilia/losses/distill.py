"""Distillation and distribution-matching losses: Hinton KD, MMD, mean difference.

Soft-target cross-entropy (PS-KD, soft CE in KD) needs no function of its own:
:func:`auxilia.losses.cross_entropy` accepts ``[B, K]`` probabilities as its target.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from auxilia.losses.metric import pairwise_sq_distances

MEDIAN_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
          ) -> torch.Tensor:
    """Knowledge-distillation loss of Hinton, Vinyals & Dean 2015.

    T² · (1/B) Σ_b KL(p_t^T ‖ p_s^T), with p^T = softmax(logits / T), the KL summed over classes
    and divided by the batch ("batchmean"); the T² keeps gradient magnitudes comparable across
    temperatures. Nothing is detached here: the caller passes ``teacher_logits.detach()`` (or
    lets gradients reach the teacher on purpose, as in mutual learning). Computed in float32
    (float64 inputs stay float64).

    Args:
        student_logits: ``[B, K]``.
        teacher_logits: ``[B, K]``.
        temperature: T > 0.

    Returns:
        Scalar loss, 0 when the two sets of logits are equal.
    """
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: Literal["gaussian", "linear"] = "gaussian",
        bandwidths: tuple[float, ...] = MEDIAN_MULTIPLIERS,
        scale: Literal["median", "absolute"] = "median") -> torch.Tensor:
    """Squared Maximum Mean Discrepancy, biased estimator (Gretton et al. 2012, Eq. 5).

    MMD²_b = mean_{i,i'} k(x_i, x_i') + mean_{j,j'} k(y_j, y_j') − 2 mean_{i,j} k(x_i, y_j), with
    the diagonal terms included (a V-statistic: ≥ 0 up to rounding, exactly 0 for equal sets).

    ``"gaussian"``: a sum of Gaussian kernels k(a, b) = Σ_σ exp(−‖a − b‖² / (2σ²)), so the value
    lies in [0, 2·len(bandwidths)]. With ``scale="median"`` (the default) each σ is a multiplier
    of the median pairwise distance of the pooled set x ∪ y (the median heuristic of Gretton et
    al.; detached, so it is a data-driven constant, not something the features can move); the
    default multipliers (0.25, 0.5, 1, 2, 4) span a factor 16 around it. With
    ``scale="absolute"`` the σ are used as given. ``"linear"``: k(a, b) = a·b, for which MMD²_b
    equals :func:`mean_difference` (bandwidths are ignored).

    Args:
        x: ``[N, D]`` features of one set.
        y: ``[M, D]`` features of the other.
        kernel: ``"gaussian"`` or ``"linear"``.
        bandwidths: the σ multipliers (``scale="median"``) or the σ themselves.
        scale: ``"median"`` or ``"absolute"``.

    Returns:
        Scalar MMD²_b, computed in float32 (float64 inputs stay float64); symmetric in x and y.
    """
    if kernel == "linear":
        return mean_difference(x, y)
    if kernel != "gaussian":
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    if not bandwidths:
        raise ValueError("bandwidths must not be empty")
    pooled = torch.cat([x, y])
    sq = pairwise_sq_distances(pooled, pooled)
    k = sum(torch.exp(-sq / (2 * s2)) for s2 in _sigma_squares(sq, bandwidths, scale))
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def mean_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distance between the feature means, ‖mean(x) − mean(y)‖².

    The linear-kernel MMD²; the "MMD" of a public DDGSD implementation, which scales it by
    5e-4: that factor belongs to the caller's term weight, not here.

    Args:
        x: ``[N, D]``.
        y: ``[M, D]``.

    Returns:
        Scalar, computed in float32 (float64 inputs stay float64).
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return (x.to(dtype).mean(0) - y.to(dtype).mean(0)).square().sum()


def _sigma_squares(sq: torch.Tensor, bandwidths: tuple[float, ...],
                   scale: Literal["median", "absolute"]) -> list[torch.Tensor | float]:
    """The σ² of each Gaussian kernel, from squared pooled distances ``sq`` (``[P, P]``)."""
    if scale == "absolute":
        return [s * s for s in bandwidths]
    if scale != "median":
        raise ValueError(f"scale must be 'median' or 'absolute', got {scale!r}")
    diagonal = torch.eye(len(sq), dtype=torch.bool, device=sq.device)
    median_sq = sq.detach().masked_fill(diagonal, float("nan")).nanmedian()
    median_sq = median_sq.clamp_min(torch.finfo(sq.dtype).tiny)
    return [m * m * median_sq for m in bandwidths]
