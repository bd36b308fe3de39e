"""Classification losses and metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
                  ) -> torch.Tensor:
    """Mean cross-entropy against hard labels or soft targets.

    Args:
        logits: ``[B, K]`` unnormalised scores.
        target: ``[B]`` int64 class indices, or ``[B, K]`` probabilities (soft targets, as in
            distillation and PS-KD).
        label_smoothing: ε of Szegedy et al. 2016: the target becomes (1−ε)·y + ε/K.

    Returns:
        Scalar: −(1/B) Σ_b Σ_k t_bk · log softmax(logits)_bk, computed in float32.
    """
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, torch.Tensor]:
    """Count samples whose label is among the top-k scores.

    Args:
        logits: ``[B, K]``.
        labels: ``[B]`` int64.
        ks: the k values; a k larger than K counts every sample as correct.

    Returns:
        ``{k: scalar int64 tensor}`` of correct counts.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels[:, None]
    return {k: hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks}
