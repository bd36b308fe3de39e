"""SupCon / NT-Xent against a loop-per-anchor reference written from Khosla et al. 2020, Eq. 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auxilia.losses import supcon


def _features(seed: int, batch: int, views: int, dim: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g, dtype=torch.float64), dim=-1)


def _labels(seed: int, batch: int, classes: int = 3) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed + 99))


def _supcon_loop(features: torch.Tensor, labels: torch.Tensor | None, tau: float,
                 base_tau: float) -> float:
    """L_out: −(τ/τ_b)·mean_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ)), mean over i."""
    batch, views, _ = features.shape
    rows = [(b, v) for b in range(batch) for v in range(views)]  # sample-major, unlike the code
    z = {r: features[r].tolist() for r in rows}
    ident = {(b, v): (int(labels[b]) if labels is not None else b) for b, v in rows}

    def sim(i: tuple[int, int], j: tuple[int, int]) -> float:
        return sum(p * q for p, q in zip(z[i], z[j], strict=True)) / tau

    per_anchor = []
    for i in rows:
        others = [a for a in rows if a != i]
        positives = [p for p in others if ident[p] == ident[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(sim(i, a)) for a in others))
        mean_log_prob = sum(sim(i, p) - log_denominator for p in positives) / len(positives)
        per_anchor.append(-(tau / base_tau) * mean_log_prob)
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize(("tau", "base_tau"), [(0.07, 0.07), (0.5, 0.07)])
def test_matches_loop_reference(seed: int, views: int, labelled: bool, tau: float,
                                base_tau: float) -> None:
    features = _features(seed, 6, views)
    labels = _labels(seed, 6) if labelled else None
    got = supcon(features, labels, temperature=tau, base_temperature=base_tau)
    expected = torch.tensor(_supcon_loop(features, labels, tau, base_tau), dtype=torch.float64)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_worked_example_from_reference() -> None:
    raw = torch.tensor([[[1, 2, 3], [2, 2, 2]], [[1, 1, 1], [2, 2, 4]], [[1, 1, 1], [1, 0, 6]]],
                       dtype=torch.float32)
    loss = supcon(F.normalize(raw, dim=-1), torch.tensor([1, 2, 1]), 0.07, 0.07)
    assert abs(loss.item() - 2.3816) < 1e-3


@pytest.mark.parametrize("views", [2, 3])
def test_no_labels_is_supcon_with_one_class_per_sample(views: int) -> None:
    features = _features(3, 8, views)
    assert torch.allclose(supcon(features), supcon(features, torch.arange(8)))


def test_two_views_without_labels_is_nt_xent() -> None:
    """SimCLR (Chen et al. 2020): cross-entropy of each row against its other view's index."""
    batch, tau = 7, 0.2
    features = _features(4, batch, 2)
    z = torch.cat([features[:, 0], features[:, 1]])
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    expected = F.cross_entropy(logits, target)
    assert torch.allclose(supcon(features, temperature=tau, base_temperature=tau), expected)


def test_float32_agrees_with_float64() -> None:
    features, labels = _features(5, 16, 2), _labels(5, 16)
    low = supcon(features.float(), labels)
    assert low.dtype == torch.float32
    assert torch.allclose(low.double(), supcon(features, labels), rtol=1e-5)


def test_gradients_reach_every_feature() -> None:
    features = _features(6, 8, 2).requires_grad_()
    supcon(features, _labels(6, 8)).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert (features.grad.flatten(1).norm(dim=1) > 0).all()


def test_anchors_without_positive_are_left_out() -> None:
    features = _features(7, 4, 1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 2])  # anchors 2 and 3 have no positive, still negatives
    loss = supcon(features, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    assert (features.grad.flatten(1).norm(dim=1) > 0).all()
    z = features.detach()[:, 0] @ features.detach()[:, 0].T / 0.07
    lse = torch.stack([z[i, [j for j in range(4) if j != i]].logsumexp(0) for i in (0, 1)])
    expected = -(z[0, 1] - lse).mean()  # the mean over anchors 0 and 1 only
    assert torch.allclose(loss.detach(), expected)


@pytest.mark.parametrize(("batch", "labelled"), [(5, True), (5, False), (1, False)])
def test_no_positive_at_all_gives_an_attached_zero(batch: int, labelled: bool) -> None:
    features = _features(8, batch, 1).requires_grad_()
    loss = supcon(features, torch.arange(batch) if labelled else None)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_invariant_to_batch_and_view_permutation() -> None:
    features, labels = _features(9, 10, 3), _labels(9, 10)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    loss = supcon(features, labels)
    assert torch.allclose(loss, supcon(features[order], labels[order]))
    assert torch.allclose(loss, supcon(features[:, [2, 0, 1]], labels))


def test_label_values_do_not_matter_only_their_equality() -> None:
    features = _features(10, 6, 2)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    assert torch.allclose(supcon(features, labels), supcon(features, labels * 7 + 100))


def test_stays_on_the_features_device() -> None:
    """On the meta device any tensor made elsewhere (a ``'cuda'`` or CPU literal) would clash."""
    features = torch.empty(4, 2, 3, device="meta")
    assert supcon(features, torch.tensor([0, 1, 0, 1], device="meta")).device.type == "meta"
    assert supcon(features).device.type == "meta"


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="B, V, D"):
        supcon(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="labels"):
        supcon(torch.zeros(4, 2, 3), torch.zeros(3, dtype=torch.long))
