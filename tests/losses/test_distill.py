"""Hinton KD, soft-target cross-entropy, MMD and mean difference against loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auxilia.losses import cross_entropy, kd_kl, mean_difference, mmd


def _randn(seed: int, *shape: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) + shift


def _softmax_row(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kd_loop(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T² · (1/B) Σ_b Σ_k p_t log(p_t / p_s), both softened by T (Hinton et al. 2015)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p_s, p_t = _softmax_row(s_row, temperature), _softmax_row(t_row, temperature)
        total += sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.0])
def test_kd_kl_matches_loop_and_kl_div(seed: int, temperature: float) -> None:
    student, teacher = _randn(seed, 6, 5) * 3, _randn(seed + 10, 6, 5) * 3
    got = kd_kl(student, teacher, temperature)
    expected = F.kl_div(F.log_softmax(student / temperature, dim=1),
                        F.softmax(teacher / temperature, dim=1), reduction="batchmean")
    assert torch.allclose(got, expected * temperature**2)
    assert math.isclose(got.item(), _kd_loop(student, teacher, temperature), rel_tol=1e-10)


def test_kd_kl_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = _randn(3, 4, 7)
    assert kd_kl(logits, logits.clone(), 4.0).abs().item() < 1e-12
    assert kd_kl(logits, _randn(4, 4, 7), 4.0).item() > 0


def test_kd_kl_detaches_nothing_and_computes_in_float32() -> None:
    student = _randn(5, 4, 6).half().requires_grad_()
    teacher = _randn(6, 4, 6).half().requires_grad_()
    loss = kd_kl(student, teacher, 2.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_kd_kl_invariant_to_batch_permutation() -> None:
    student, teacher = _randn(7, 8, 5), _randn(8, 8, 5)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(kd_kl(student, teacher, 4.0), kd_kl(student[order], teacher[order], 4.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_already_takes_soft_targets(seed: int) -> None:
    """PS-KD's soft cross-entropy −(1/B) Σ_b Σ_k t_bk log softmax(z)_bk needs no new function."""
    logits = _randn(seed, 5, 4)
    targets = F.softmax(_randn(seed + 1, 5, 4), dim=1)
    expected = 0.0
    for z_row, t_row in zip(logits.tolist(), targets.tolist(), strict=True):
        log_norm = math.log(sum(math.exp(v) for v in z_row))
        expected -= sum(t * (z - log_norm) for z, t in zip(z_row, t_row, strict=True))
    expected /= len(logits)
    got = cross_entropy(logits.float(), targets.float())
    assert math.isclose(got.item(), expected, rel_tol=1e-5)
    hard = targets.argmax(dim=1)
    assert torch.allclose(cross_entropy(logits, F.one_hot(hard, 4).double()),
                          cross_entropy(logits, hard).double(), atol=1e-6)


def _gaussian_mmd_loop(x: torch.Tensor, y: torch.Tensor, sigmas: list[float]) -> float:
    """Biased MMD² of Gretton et al. 2012 (Eq. 5) with k = Σ_σ exp(−‖a − b‖² / 2σ²)."""

    def k(a: list[float], b: list[float]) -> float:
        d2 = sum((p - q) ** 2 for p, q in zip(a, b, strict=True))
        return sum(math.exp(-d2 / (2 * s * s)) for s in sigmas)

    xs, ys = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
    kyy = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
    kxy = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
    return kxx + kyy - 2 * kxy


def _median_distance_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """Lower median of the distances between distinct points of the pooled set."""
    pooled = x.tolist() + y.tolist()
    dists = sorted(math.dist(a, b) for i, a in enumerate(pooled)
                   for j, b in enumerate(pooled) if i != j)
    return dists[(len(dists) - 1) // 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_matches_loop_reference(seed: int) -> None:
    x, y = _randn(seed, 7, 3), _randn(seed + 20, 5, 3, shift=0.5)
    sigmas = [0.5, 1.0, 3.0]
    absolute = mmd(x, y, bandwidths=tuple(sigmas), scale="absolute")
    assert math.isclose(absolute.item(), _gaussian_mmd_loop(x, y, sigmas), rel_tol=1e-9)
    median = _median_distance_loop(x, y)
    multipliers = [0.25, 0.5, 1.0, 2.0, 4.0]
    expected = _gaussian_mmd_loop(x, y, [m * median for m in multipliers])
    assert math.isclose(mmd(x, y).item(), expected, rel_tol=1e-9)


def test_mmd_is_zero_for_identical_sets_and_grows_with_shift() -> None:
    x = _randn(0, 32, 4)
    assert abs(mmd(x, x.clone()).item()) < 1e-12
    values = [mmd(x, _randn(1, 32, 4, shift=s)).item() for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] < 0.5 * values[-1]
    assert all(v > 0 for v in values)


def test_mmd_is_symmetric_and_permutation_invariant() -> None:
    x, y = _randn(2, 9, 3), _randn(3, 6, 3, shift=1.0)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mmd(x, y), mmd(y, x))
    assert torch.allclose(mmd(x, y), mmd(x[order], y))
    absolute = {"bandwidths": (1.0, 2.0), "scale": "absolute"}
    assert torch.allclose(mmd(x, y, **absolute), mmd(y, x, **absolute))


def test_linear_mmd_is_the_mean_difference() -> None:
    x, y = _randn(4, 10, 5), _randn(5, 7, 5, shift=0.3)
    expected = sum((a - b) ** 2 for a, b in zip(x.mean(0).tolist(), y.mean(0).tolist(),
                                                 strict=True))
    assert math.isclose(mean_difference(x, y).item(), expected, rel_tol=1e-12)
    assert torch.allclose(mmd(x, y, kernel="linear"), mean_difference(x, y))
    linear_loop = (x @ x.T).mean() + (y @ y.T).mean() - 2 * (x @ y.T).mean()
    assert torch.allclose(mean_difference(x, y), linear_loop)


def test_mmd_gradients_flow_and_are_finite_for_coincident_points() -> None:
    x = _randn(6, 8, 3).requires_grad_()
    y = torch.cat([x.detach()[:4], _randn(7, 4, 3)]).requires_grad_()
    mmd(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    collapsed = torch.zeros(5, 3, requires_grad=True)
    value = mmd(collapsed, collapsed)
    value.backward()
    assert value.item() == 0 and torch.isfinite(collapsed.grad).all()


def test_mmd_float16_inputs_give_float32() -> None:
    assert mmd(_randn(8, 4, 3).half(), _randn(9, 4, 3).half()).dtype == torch.float32
    assert mean_difference(_randn(8, 4, 3).half(), _randn(9, 4, 3).half()).dtype == torch.float32


def test_mmd_rejects_unknown_options() -> None:
    x = _randn(0, 3, 2)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, x, kernel="laplacian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        mmd(x, x, scale="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=())
