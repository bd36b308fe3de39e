"""Deep metric learning losses on a batch of embeddings: triplet and pairwise (contrastive) margin.

Distances are plain (not squared) Euclidean unless a function says otherwise; the square root is
taken of the squared distance clamped at ``_EPS`` so that coincident points give finite gradients.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

_EPS = 1e-12


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of two sets, without ``[N, M, D]`` tensors.

    Args:
        a: ``[N, D]``.
        b: ``[M, D]``.

    Returns:
        ``[N, M]`` of ‖a_i − b_j‖² = ‖a_i‖² + ‖b_j‖² − 2 a_i·b_j, clamped at 0 against rounding;
        computed in float32 (float64 inputs stay float64) with autocast off for the product.
    """
    a, b, cross = _matmul_t(a, b)
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * cross).clamp_min(0)


def triplet_margin(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                   mining: Literal["batch_hard", "all"] = "batch_hard", squared: bool = False
                   ) -> torch.Tensor:
    """Triplet margin loss mined inside the batch.

    ``"batch_hard"`` (Hermans et al. 2017, "In Defense of the Triplet Loss"): for each anchor a,
    max(0, max_p d(a, p) − min_n d(a, n) + margin) over its positives p ≠ a (same label) and
    negatives n (other labels), averaged over the anchors that have both; anchors missing either
    are left out. ``"all"`` (Schroff et al. 2015, FaceNet; "batch all"): max(0, d(a, p) − d(a, n) +
    margin) over every valid triplet, averaged over the triplets whose loss is positive; this
    builds a ``[B, B, B]`` tensor. With nothing to average the result is a zero still attached to
    the graph.

    Args:
        embeddings: ``[B, D]``; normalise them first if the margin assumes the unit sphere.
        labels: ``[B]`` integer labels.
        margin: the margin α, in units of the distance.
        mining: ``"batch_hard"`` or ``"all"``.
        squared: use squared Euclidean distances (FaceNet) instead of plain ones (Hermans et al.,
            the default).

    Returns:
        Scalar loss.
    """
    dist = _distances(embeddings, squared)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if mining == "batch_hard":
        return _batch_hard(dist, positive, ~same, margin)
    if mining == "all":
        return _batch_all(dist, positive, ~same, margin)
    raise ValueError(f"mining must be 'batch_hard' or 'all', got {mining!r}")


def pairwise_margin(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5
                    ) -> torch.Tensor:
    """Contrastive (pairwise margin) loss of Hadsell, Chopra & LeCun 2006.

    For every unordered pair i < j with plain Euclidean distance d: ½·d² if the labels match
    (pulled together), ½·max(0, margin − d)² otherwise (pushed beyond the margin); the loss is the
    mean over all B(B−1)/2 pairs. A batch of fewer than two gives a zero attached to the graph.

    Args:
        embeddings: ``[B, D]``.
        labels: ``[B]`` integer labels.
        margin: m, the distance beyond which negatives cost nothing.

    Returns:
        Scalar loss.
    """
    if len(labels) < 2:
        return embeddings.sum() * 0
    sq = pairwise_sq_distances(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    push = (margin - sq.clamp_min(_EPS).sqrt()).clamp_min(0).square()
    pair_loss = 0.5 * torch.where(same, sq, push)
    upper = torch.ones_like(same).triu(diagonal=1)
    n = len(labels)
    return torch.where(upper, pair_loss, 0).sum() / (n * (n - 1) / 2)


def _matmul_t(a: torch.Tensor, b: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, a @ bᵀ)``, a and b promoted to at least float32, autocast off for the product."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    device = a.device.type
    no_autocast = (torch.autocast(device, enabled=False)
                   if torch.amp.is_autocast_available(device) else contextlib.nullcontext())
    with no_autocast:
        return a, b, a @ b.T


def _distances(embeddings: torch.Tensor, squared: bool) -> torch.Tensor:
    """``[B, B]`` squared or plain Euclidean distances (plain ones safe to differentiate at 0)."""
    sq = pairwise_sq_distances(embeddings, embeddings)
    return sq if squared else sq.clamp_min(_EPS).sqrt()


def _batch_hard(dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                margin: float) -> torch.Tensor:
    """Hardest positive and hardest negative per anchor; mean over anchors that have both."""
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    anchor_loss = torch.where(valid, (hardest_pos - hardest_neg + margin).clamp_min(0), 0)
    return anchor_loss.sum() / valid.sum().clamp(min=1)


def _batch_all(dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
               margin: float) -> torch.Tensor:
    """Every valid (a, p, n); mean over the triplets with a positive loss."""
    valid = positive[:, :, None] & negative[:, None, :]
    triplet = (dist[:, :, None] - dist[:, None, :] + margin).clamp_min(0)
    triplet = torch.where(valid, triplet, 0)
    return triplet.sum() / (triplet > 0).sum().clamp(min=1)
