"""Triplet (batch-hard, batch-all) and pairwise margin losses against loop references."""

from __future__ import annotations

import math

import pytest
import torch

from auxilia.losses import pairwise_margin, pairwise_sq_distances, triplet_margin


def _embeddings(seed: int, batch: int, dim: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=torch.float64)


def _labels(seed: int, batch: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed + 7))


def _dist(a: list[float], b: list[float], squared: bool) -> float:
    d = math.dist(a, b)
    return d * d if squared else d


def _batch_hard_loop(emb: torch.Tensor, labels: torch.Tensor, margin: float,
                     squared: bool) -> float:
    """Hermans et al. 2017: mean over anchors of [max_p d(a,p) − min_n d(a,n) + m]_+."""
    xs, ys = emb.tolist(), labels.tolist()
    losses = []
    for a in range(len(xs)):
        pos = [_dist(xs[a], xs[p], squared) for p in range(len(xs)) if p != a and ys[p] == ys[a]]
        neg = [_dist(xs[a], xs[n], squared) for n in range(len(xs)) if ys[n] != ys[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses) if losses else 0.0


def _batch_all_loop(emb: torch.Tensor, labels: torch.Tensor, margin: float,
                    squared: bool) -> float:
    """Schroff et al. 2015 over all valid (a, p, n), mean over the triplets with positive loss."""
    xs, ys = emb.tolist(), labels.tolist()
    active = []
    for a in range(len(xs)):
        for p in range(len(xs)):
            for n in range(len(xs)):
                if p == a or ys[p] != ys[a] or ys[n] == ys[a]:
                    continue
                loss = _dist(xs[a], xs[p], squared) - _dist(xs[a], xs[n], squared) + margin
                if loss > 0:
                    active.append(loss)
    return sum(active) / len(active) if active else 0.0


def _pairwise_loop(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Hadsell et al. 2006: ½d² for similar pairs, ½[m − d]_+² for dissimilar, mean over i < j."""
    xs, ys = emb.tolist(), labels.tolist()
    losses = []
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            d = math.dist(xs[i], xs[j])
            losses.append(0.5 * d * d if ys[i] == ys[j] else 0.5 * max(0.0, margin - d) ** 2)
    return sum(losses) / len(losses)


def test_pairwise_sq_distances_match_loop() -> None:
    a, b = _embeddings(0, 5), _embeddings(1, 3)
    expected = torch.tensor([[math.dist(p, q) ** 2 for q in b.tolist()] for p in a.tolist()],
                            dtype=torch.float64)
    assert torch.allclose(pairwise_sq_distances(a, b), expected)
    assert (pairwise_sq_distances(a, a).diagonal().abs() < 1e-12).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_batch_hard_matches_loop(seed: int, squared: bool, margin: float) -> None:
    emb, labels = _embeddings(seed, 10), _labels(seed, 10, 4)
    got = triplet_margin(emb, labels, margin, "batch_hard", squared=squared)
    assert math.isclose(got.item(), _batch_hard_loop(emb, labels, margin, squared),
                        rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("squared", [False, True])
def test_batch_all_matches_loop(seed: int, squared: bool) -> None:
    emb, labels = _embeddings(seed, 9), _labels(seed, 9, 3)
    got = triplet_margin(emb, labels, 0.5, "all", squared=squared)
    assert math.isclose(got.item(), _batch_all_loop(emb, labels, 0.5, squared),
                        rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
def test_anchors_without_positive_or_negative_are_left_out(mining: str) -> None:
    emb = _embeddings(4, 6).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # anchor 5 has no positive
    loss = triplet_margin(emb, labels, 1.0, mining)
    loss.backward()
    loop = _batch_hard_loop if mining == "batch_hard" else _batch_all_loop
    assert math.isclose(loss.item(), loop(emb.detach(), labels, 1.0, False), rel_tol=1e-9)
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
@pytest.mark.parametrize("labels", [[3, 3, 3, 3], [0, 1, 2, 3]])
def test_no_valid_triplet_gives_an_attached_zero(mining: str, labels: list[int]) -> None:
    emb = _embeddings(5, 4).requires_grad_()
    loss = triplet_margin(emb, torch.tensor(labels), 0.2, mining)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
def test_triplet_gradients_finite_for_coincident_points(mining: str) -> None:
    point = _embeddings(6, 1)
    emb = torch.cat([point, point, point + 0.01, point]).requires_grad_()
    loss = triplet_margin(emb, torch.tensor([0, 0, 1, 1]), 0.5, mining)  # d = 0 both ways
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
def test_triplet_invariant_to_batch_permutation(mining: str) -> None:
    emb, labels = _embeddings(7, 12), _labels(7, 12, 3)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(triplet_margin(emb, labels, mining=mining),
                          triplet_margin(emb[order], labels[order], mining=mining))


def test_triplet_rejects_unknown_mining() -> None:
    with pytest.raises(ValueError, match="mining"):
        triplet_margin(_embeddings(0, 4), torch.tensor([0, 0, 1, 1]), mining="semi_hard")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.5, 3.0])
def test_pairwise_margin_matches_loop(seed: int, margin: float) -> None:
    emb, labels = _embeddings(seed, 8), _labels(seed, 8, 3)
    got = pairwise_margin(emb, labels, margin)
    assert math.isclose(got.item(), _pairwise_loop(emb, labels, margin), rel_tol=1e-9)


def test_pairwise_margin_permutation_gradients_and_small_batches() -> None:
    emb, labels = _embeddings(8, 10), _labels(8, 10, 2)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pairwise_margin(emb, labels), pairwise_margin(emb[order], labels[order]))
    dup = torch.cat([emb[:3], emb[:3]]).requires_grad_()
    loss = pairwise_margin(dup, torch.tensor([0, 1, 2, 1, 2, 0]), margin=10.0)
    loss.backward()
    assert torch.isfinite(dup.grad).all() and dup.grad.abs().sum() > 0
    single = emb[:1].clone().requires_grad_()
    zero = pairwise_margin(single, labels[:1])
    assert zero.item() == 0.0 and zero.requires_grad


def test_float16_inputs_give_float32() -> None:
    emb, labels = _embeddings(9, 6).half(), _labels(9, 6, 2)
    assert triplet_margin(emb, labels).dtype == torch.float32
    assert pairwise_margin(emb, labels).dtype == torch.float32
