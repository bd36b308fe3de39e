"""SupCon over shares of a batch: the anchors of every share, contrasted against all rows, add
up to the whole batch's loss (what several processes compute, each with its own share)."""

from __future__ import annotations

import pytest
import torch

from auxilia.losses import supcon
from auxilia.losses.contrastive import supcon_sum


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("shares", [2, 4])
def test_shares_of_anchors_add_up_to_the_whole_batch(labelled: bool, shares: int) -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(16, 2, 8, generator=gen), dim=-1)
    features.requires_grad_(True)
    labels = torch.randint(0, 3, (16,), generator=gen) if labelled else None
    whole = supcon(features, labels, 0.1)
    (grad_whole,) = torch.autograd.grad(whole, features)
    size = 16 // shares
    parts = [supcon_sum(features, labels, 0.1, anchors=slice(r * size, (r + 1) * size))
             for r in range(shares)]
    count = sum(c for _, c in parts)
    assert count == (32 if not labelled else count)  # every anchor has a positive unlabelled
    # each share's loss as a rank computes it; their mean (DDP's average) is the whole loss
    losses = [total * shares / count for total, _ in parts]
    mean = sum(losses) / shares
    assert torch.allclose(mean, whole, atol=1e-6)
    (grad_mean,) = torch.autograd.grad(mean, features)
    assert torch.allclose(grad_mean, grad_whole, atol=1e-6)
    assert not torch.allclose(losses[0], whole)  # a share alone is not the whole batch's loss


def test_a_share_without_positives_counts_nothing() -> None:
    features = torch.nn.functional.normalize(torch.randn(4, 1, 8), dim=-1)
    labels = torch.tensor([0, 1, 2, 2])
    total, count = supcon_sum(features, labels, 0.1, anchors=slice(0, 2))
    assert count == 0 and total == 0
