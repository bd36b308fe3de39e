"""Self-distillation terms: detached teachers, the PS-KD prediction bank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from auxilia.terms import FeatureL2, KLDistill, PredictionBankCE, Progress, Ref


def test_kl_distill_teaches_the_student_only() -> None:
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4, requires_grad=True)
    outs = {("student", "x_lb"): {"s1": {"logits": student}, "final": {"logits": teacher}}}
    term = KLDistill("kd", Ref("x_lb", "s1"), Ref("x_lb"), temperature=3.0)
    value = term.compute(outs, {}, Progress(0, 1, 1))
    expected = 9.0 * F.kl_div(F.log_softmax(student / 3, 1), F.softmax(teacher / 3, 1),
                              reduction="batchmean")
    assert torch.allclose(value, expected)
    value.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_feature_hint_is_squared_distance_to_a_detached_target() -> None:
    hint = torch.randn(3, 6, requires_grad=True)
    target = torch.randn(3, 6, requires_grad=True)
    outs = {("student", "x_lb"): {"s1": {"hint": hint}, "final": {"feat": target}}}
    term = FeatureL2("hint", Ref("x_lb", "s1", "hint"), Ref("x_lb", "final", "feat"))
    value = term.compute(outs, {}, Progress(0, 1, 1))
    assert torch.allclose(value, sum(((hint[i] - target[i]) ** 2).sum() for i in range(3)) / 3)
    value.backward()
    assert target.grad is None


def test_prediction_bank_targets_follow_the_paper() -> None:
    term = PredictionBankCE("ps_kd", Ref("x_lb"), num_samples=6, num_classes=3, alpha_max=0.8)
    logits = torch.randn(2, 3)
    batch = {"y_lb": torch.tensor([0, 2]), "idx_lb": torch.tensor([4, 1])}
    outs = {("student", "x_lb"): {"final": {"logits": logits}}}
    first = term.compute(outs, batch, Progress(0, 40, 10))  # epoch 0: nothing seen yet
    assert torch.allclose(first, F.cross_entropy(logits, batch["y_lb"]))
    assert term.seen.sum() == 0  # compute is pure: only a committed step writes the bank
    term.after_step(outs, batch, Progress(0, 40, 10))
    assert torch.allclose(term.bank[[4, 1]], logits.softmax(1)) and term.seen.sum() == 2
    new_logits = torch.randn(2, 3)
    outs = {("student", "x_lb"): {"final": {"logits": new_logits}}}
    second = term.compute(outs, batch, Progress(25, 40, 10))  # epoch 2 of 4: α = 0.8·3/4
    alpha = 0.8 * 3 / 4
    target = (1 - alpha) * F.one_hot(batch["y_lb"], 3) + alpha * logits.softmax(1)
    expected = -(target * new_logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(second, expected, atol=1e-6)
    state = term.state_dict()
    assert set(state) == {"bank", "seen"}  # saved with the checkpoint, so resume is exact


def test_alpha_schedule_reaches_alpha_max_in_the_last_epoch() -> None:
    term = PredictionBankCE("p", Ref("x_lb"), 1, 2, alpha_max=0.8)
    assert term.alpha(Progress(0, 100, 10)) == pytest.approx(0.08)
    assert term.alpha(Progress(99, 100, 10)) == pytest.approx(0.8)
