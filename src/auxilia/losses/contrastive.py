"""Contrastive losses over several views of a batch: SupCon and SimCLR's NT-Xent."""

from __future__ import annotations

import torch

from auxilia.losses.metric import _matmul_t


def supcon(features: torch.Tensor, labels: torch.Tensor | None = None,
           temperature: float = 0.07, base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised Contrastive loss (Khosla et al. 2020, L_out), or NT-Xent without labels.

    Every one of the N = B·V rows is an anchor (contrast mode "all"). For anchor i with
    positives P(i) (the other rows of the same label, or without labels the other views of the
    same sample, which is SimCLR's NT-Xent, Chen et al. 2020) and A(i) all rows but i:

        ℓ_i = −(τ/τ_base) · (1/|P(i)|) Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )

    and the loss is the mean of ℓ_i over the anchors that have a positive. Anchors without one
    (possible only with labels and V = 1) are left out instead of giving NaN; when no anchor has
    a positive the result is a zero still attached to the graph. No device sync, no tensor
    larger than ``[N, N]``, computed in float32 (float64 inputs stay float64) with autocast off.

    Args:
        features: ``[B, V, D]`` embeddings of V views of each of B samples, **already L2
            normalised** along D (this function does not normalise).
        labels: ``[B]`` integer class labels, or None for the self-supervised (SimCLR) loss.
        temperature: τ, dividing the cosine similarities.
        base_temperature: τ_base; the loss is scaled by τ/τ_base (1 by default).

    Returns:
        Scalar loss.
    """
    total, count = supcon_sum(features, labels, temperature, base_temperature)
    return total / count.clamp(min=1)


def supcon_sum(features: torch.Tensor, labels: torch.Tensor | None = None,
               temperature: float = 0.07, base_temperature: float = 0.07,
               anchors: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`supcon`'s numerator and denominator: ``(Σ ℓ_i, count)`` over the anchors that
    have a positive, the anchors being the samples ``anchors`` (all by default) in every view,
    contrasted against all N rows.

    Several processes each holding a share of the batch compute their anchors' sum against
    the gathered rows; the sums and counts of all shares add up to the whole batch's, so
    ``Σ sums / Σ counts`` is :func:`supcon` of the whole batch.

    Returns:
        ``(sum, count)``: a scalar attached to the graph, and a scalar count.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [B, V, D], got shape {tuple(features.shape)}")
    batch, views, _ = features.shape
    if labels is not None and labels.shape != (batch,):
        raise ValueError(f"labels must be [{batch}], got shape {tuple(labels.shape)}")
    if batch * views < 2:
        return features.sum() * 0, torch.zeros((), device=features.device)
    ids = labels if labels is not None else torch.arange(batch, device=features.device)
    rows = None if anchors is None else view_major_rows(anchors, batch, views, features.device)
    log_prob, self_pair = _log_prob(features, temperature, rows)
    positives = _positive_mask(ids.to(features.device), views, rows) & ~self_pair
    n_pos = positives.sum(dim=1)
    pos_log_prob = torch.where(positives, log_prob, 0).sum(dim=1)
    anchor_loss = -(temperature / base_temperature) * pos_log_prob / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    return torch.where(has_pos, anchor_loss, 0).sum(), has_pos.sum().to(anchor_loss.dtype)


def view_major_rows(samples: slice, batch: int, views: int,
                    device: torch.device | None = None) -> torch.Tensor:
    """The row numbers ``[V·b]`` of samples ``samples`` in every view, in ``V`` views of
    ``batch`` samples concatenated view-major (a process's own anchors among gathered rows)."""
    own = torch.arange(batch, device=device)[samples]
    return (torch.arange(views, device=device)[:, None] * batch + own[None, :]).reshape(-1)


def _log_prob(features: torch.Tensor, temperature: float, rows: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, N]`` log-softmax of z·zᵀ/τ over each anchor row (R = N, or ``rows``) without its
    own column, rows view-major; and the ``[R, N]`` mask of those own columns."""
    z = features.transpose(0, 1).reshape(-1, features.shape[-1])
    anchor = z if rows is None else z[rows]
    logits = _matmul_t(anchor, z)[2] / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    own = torch.arange(z.shape[0], device=z.device) if rows is None else rows
    self_pair = own[:, None] == torch.arange(z.shape[0], device=z.device)[None, :]
    masked = logits.masked_fill(self_pair, float("-inf"))
    return logits - masked.logsumexp(dim=1, keepdim=True), self_pair


def _positive_mask(ids: torch.Tensor, views: int, rows: torch.Tensor | None) -> torch.Tensor:
    """``[R, N]`` bool: rows that share an id with each anchor row (itself included), rows
    ordered view-major like ``_log_prob``."""
    ids = ids.repeat(views)
    anchor = ids if rows is None else ids[rows]
    return anchor[:, None] == ids[None, :]
