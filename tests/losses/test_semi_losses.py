"""Semi-supervised losses against loops written from the papers' formulas: MixMatch's sharpening,
MixUp and L_u, softmax MSE, soft and masked CE (FixMatch), ramps and UDA's TSA thresholds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from auxilia.losses import (
    linear_rampup,
    masked_cross_entropy,
    mixup,
    sharpen,
    sigmoid_rampup,
    soft_cross_entropy,
    softmax_mse,
    tsa_threshold,
)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _probs(seed: int, b: int = 5, c: int = 4) -> torch.Tensor:
    return (_randn(seed, b, c) * 2).softmax(dim=1)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sharpen_matches_its_formula(temperature: float) -> None:
    p = _probs(0)
    got = sharpen(p, temperature)
    for i, row in enumerate(p.tolist()):
        powered = [v ** (1 / temperature) for v in row]
        for c, v in enumerate(powered):
            assert got[i, c].item() == pytest.approx(v / sum(powered), rel=1e-9)
    assert torch.allclose(got.sum(dim=1), torch.ones(5, dtype=got.dtype))
    assert torch.equal(got.argmax(dim=1), p.argmax(dim=1))


def test_sharpen_is_the_identity_at_one_and_one_hot_near_zero() -> None:
    p = _probs(1)
    assert torch.allclose(sharpen(p, 1.0), p)
    hot = sharpen(p, 1e-3)
    assert torch.allclose(hot, torch.eye(4, dtype=hot.dtype)[p.argmax(dim=1)], atol=1e-9)
    assert (sharpen(p, 0.5).max(dim=1).values > p.max(dim=1).values).all()
    with pytest.raises(ValueError, match="temperature"):
        sharpen(p, 0.0)


def test_mixup_mixes_pairs_of_rows_with_one_lambda() -> None:
    torch.manual_seed(3)
    x = _randn(4, 6, 3, 2, 2)
    t = _probs(5, 6, 4)
    mx, mt, lam = mixup(x, t, 0.75)
    assert isinstance(lam, float) and 0.5 <= lam <= 1.0
    assert mx.shape == x.shape and mt.shape == t.shape
    for i in range(6):  # each row is λ'·x_i + (1 − λ')·x_j for one partner j
        partners = [j for j in range(6)
                    if torch.allclose(mx[i], lam * x[i] + (1 - lam) * x[j])
                    and torch.allclose(mt[i], lam * t[i] + (1 - lam) * t[j])]
        assert partners, f"row {i} is no mix of two rows with λ' = {lam}"
    assert torch.allclose(mt.sum(dim=1), torch.ones(6, dtype=mt.dtype))


def test_mixup_draws_from_the_global_rng() -> None:
    x, t = _randn(6, 8, 3), _probs(7, 8, 3)
    torch.manual_seed(11)
    first = mixup(x, t, 0.75)
    torch.manual_seed(11)
    again = mixup(x, t, 0.75)
    assert first[2] == again[2] and torch.equal(first[0], again[0])
    lams = {mixup(x, t, 0.75)[2] for _ in range(5)}
    assert len(lams) > 1 and min(lams) >= 0.5


def test_softmax_mse_is_the_mean_over_batch_and_classes() -> None:
    logits, target = _randn(8, 5, 4) * 2, _probs(9)
    loop = 0.0
    for row, t_row in zip(logits.tolist(), target.tolist(), strict=True):
        loop += sum((p - t) ** 2 for p, t in zip(_softmax(row), t_row, strict=True))
    assert softmax_mse(logits, target).item() == pytest.approx(loop / 20, rel=1e-9)
    assert softmax_mse(logits.float(), target.float()).dtype == torch.float32
    assert softmax_mse(logits.half(), target.half()).dtype == torch.float32
    assert softmax_mse(logits, logits.softmax(dim=1)).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_cross_entropy_matches_its_loop() -> None:
    logits, target = _randn(10, 5, 4) * 2, _probs(11)
    loop = 0.0
    for row, t_row in zip(logits.tolist(), target.tolist(), strict=True):
        loop -= sum(t * math.log(p) for p, t in zip(_softmax(row), t_row, strict=True))
    assert soft_cross_entropy(logits, target).item() == pytest.approx(loop / 5, rel=1e-9)


@pytest.mark.parametrize("hard", [True, False])
def test_masked_cross_entropy_divides_by_the_whole_batch(hard: bool) -> None:
    logits = _randn(12, 6, 3) * 2
    targets = torch.tensor([0, 2, 1, 1, 0, 2]) if hard else _probs(13, 6, 3)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    loop = 0.0
    for i, row in enumerate(logits.tolist()):
        p = _softmax(row)
        t = ([1.0 if c == targets[i] else 0.0 for c in range(3)] if hard
             else targets[i].tolist())
        loop += mask[i].item() * -sum(tc * math.log(pc) for tc, pc in zip(t, p, strict=True))
    got = masked_cross_entropy(logits, targets, mask)
    assert got.item() == pytest.approx(loop / 6, rel=1e-9)  # B = 6, not the 3 kept
    assert masked_cross_entropy(logits, targets, torch.zeros(6)).item() == 0.0


def test_ramps() -> None:
    assert sigmoid_rampup(0.0) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(-1.0) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(1.0) == 1.0 and sigmoid_rampup(3.0) == 1.0
    assert sigmoid_rampup(0.5) == pytest.approx(math.exp(-1.25))
    values = [sigmoid_rampup(k / 20) for k in range(21)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert [linear_rampup(t) for t in (-0.5, 0.0, 0.25, 1.0, 2.0)] == [0.0, 0.0, 0.25, 1.0, 1.0]


@pytest.mark.parametrize("k", [2, 10])
def test_tsa_thresholds_run_from_one_over_k_to_one(k: int) -> None:
    gap = math.exp(-5) * (1 - 1 / k)  # log ends and exp starts e^-5 short, as in UDA's code
    assert tsa_threshold("linear", 0.0, k) == pytest.approx(1 / k)
    assert tsa_threshold("log", 0.0, k) == pytest.approx(1 / k)
    assert tsa_threshold("exp", 0.0, k) == pytest.approx(1 / k + gap)
    assert tsa_threshold("linear", 1.0, k) == pytest.approx(1.0)
    assert tsa_threshold("log", 1.0, k) == pytest.approx(1.0 - gap)
    assert tsa_threshold("exp", 1.0, k) == pytest.approx(1.0)
    for schedule in ("linear", "log", "exp"):
        start = tsa_threshold(schedule, 0.0, k)  # type: ignore[arg-type]
        end = tsa_threshold(schedule, 1.0, k)  # type: ignore[arg-type]
        assert start == pytest.approx(1 / k, abs=0.007) and end == pytest.approx(1.0, abs=0.007)
        assert tsa_threshold(schedule, -1.0, k) == start  # type: ignore[arg-type]
        assert tsa_threshold(schedule, 2.0, k) == end  # type: ignore[arg-type]
        values = [tsa_threshold(schedule, t / 10, k) for t in range(11)]  # type: ignore[arg-type]
        assert all(a < b for a, b in itertools.pairwise(values))
    t = 0.3
    assert tsa_threshold("linear", t, k) == pytest.approx(t * (1 - 1 / k) + 1 / k)
    assert tsa_threshold("log", t, k) == pytest.approx((1 - math.exp(-5 * t)) * (1 - 1 / k)
                                                       + 1 / k)
    assert tsa_threshold("exp", t, k) == pytest.approx(math.exp(5 * (t - 1)) * (1 - 1 / k)
                                                       + 1 / k)
    with pytest.raises(ValueError, match="schedule"):
        tsa_threshold("cosine", 0.5, k)  # type: ignore[arg-type]
