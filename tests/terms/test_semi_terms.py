"""Semi-supervised terms against loops written from the papers' formulas: Π-model / Mean Teacher
consistency, Temporal Ensembling's bank, FixMatch / Pseudo-Label / UDA pseudo-labels, UDA's TSA
and MixMatch's mixed-target losses. Gradient reaches the student, never a target's model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auxilia.terms import (
    ConfidenceMaskedCE,
    MixedTargetCE,
    MixedTargetMSE,
    Objective,
    Progress,
    Ramp,
    Ref,
    SoftmaxConsistency,
    TemporalEnsemble,
    TSACrossEntropy,
)

WHERE = Progress(0, 1, 1)


def _logits(seed: int, b: int, c: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g) * scale).requires_grad_()


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _out(logits: torch.Tensor) -> dict:
    return {"final": {"logits": logits}}


# --- Ramp -------------------------------------------------------------------------------------

def test_ramp_factors_and_ramped_weights() -> None:
    at = Progress(25, 100, 10)  # fraction 0.25
    assert Ramp().factor(at) == 1.0 and Ramp("sigmoid", 0.0).factor(at) == 1.0
    assert Ramp("sigmoid", 0.5).factor(at) == pytest.approx(math.exp(-5 * 0.5**2))
    assert Ramp("sigmoid", 0.5).factor(Progress(0, 100, 10)) == pytest.approx(math.exp(-5))
    assert Ramp("sigmoid", 0.5).factor(Progress(60, 100, 10)) == 1.0
    assert Ramp("linear", 0.5).factor(at) == pytest.approx(0.5)
    term = SoftmaxConsistency("pi", Ref("x_ulb_w"), Ref("x_ulb_w2"), weight=30.0,
                              ramp=Ramp("linear", 0.5))
    assert term.weight_at(at) == pytest.approx(15.0)
    with pytest.raises(ValueError, match="ramp"):
        Ramp("cosine", 0.5)  # type: ignore[arg-type]


def test_terms_that_differ_in_their_ramp_are_refused_together() -> None:
    a = SoftmaxConsistency("cons", Ref("x_ulb_w"), Ref("x_ulb_w", model="ema"),
                           ramp=Ramp("sigmoid", 0.2))
    b = SoftmaxConsistency("cons", Ref("x_ulb_w"), Ref("x_ulb_w", model="ema"),
                           ramp=Ramp("sigmoid", 0.3))
    same = SoftmaxConsistency("cons", Ref("x_ulb_w"), Ref("x_ulb_w", model="ema"),
                              ramp=Ramp("sigmoid", 0.2))
    assert len((Objective([a]) | Objective([same])).terms) == 1
    with pytest.raises(ValueError, match="differently"):
        Objective([a]) | Objective([b])


# --- SoftmaxConsistency -----------------------------------------------------------------------

@pytest.mark.parametrize("target_model", ["student", "ema"])  # Π-model, Mean Teacher
def test_softmax_consistency_matches_its_loop_and_trains_only_the_student(
        target_model: str) -> None:
    s, t = _logits(0, 5, 4), _logits(1, 5, 4)
    view = "x_ulb_w2" if target_model == "student" else "x_ulb_w"
    outs = {("student", "x_ulb_w"): _out(s), (target_model, view): _out(t)}
    term = SoftmaxConsistency("cons", Ref("x_ulb_w"), Ref(view, model=target_model))
    value = term.compute(outs, {}, WHERE)
    loop = sum((a - b) ** 2 for i in range(5)
               for a, b in zip(_softmax(s[i].tolist()), _softmax(t[i].tolist()), strict=True))
    assert value.item() == pytest.approx(loop / 20, rel=1e-5) and value.item() > 0
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_softmax_consistency_without_detach_trains_both_passes() -> None:
    s, t = _logits(2, 3, 4), _logits(3, 3, 4)
    outs = {("student", "x_ulb_w"): _out(s), ("student", "x_ulb_w2"): _out(t)}
    term = SoftmaxConsistency("pi", Ref("x_ulb_w"), Ref("x_ulb_w2"), detach_target=False)
    term.compute(outs, {}, WHERE).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


# --- TemporalEnsemble -------------------------------------------------------------------------

_POSITION: dict[int, int] = {}  # term → batches its stream has drawn this epoch


def _te_step(term: TemporalEnsemble, logits: torch.Tensor | None, idx: list[int]) -> None:
    """One batch of the unlabeled stream (N // b batches an epoch), flagged as the engine's
    Batches flags it; ``logits=None``: a skipped step (drawn, never recorded)."""
    per_epoch = len(term.bank) // len(idx)
    position = _POSITION.get(id(term), 0)
    _POSITION[id(term)] = (position + 1) % per_epoch
    if logits is None:
        return
    batch = {"idx_ulb": torch.tensor(idx), "epoch_start_ulb": torch.tensor(position == 0),
             "epoch_end_ulb": torch.tensor(position + 1 == per_epoch)}
    term.after_step({("student", "x_ulb_w"): _out(logits)}, batch, WHERE)


def _te(n: int, c: int = 3, alpha: float = 0.6) -> TemporalEnsemble:
    return TemporalEnsemble("te", Ref("x_ulb_w"), num_samples=n, num_classes=c, alpha=alpha)


def _buffers(term: TemporalEnsemble) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in term.state_dict().items()}


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_temporal_ensemble_target_of_constant_predictions_is_exact(epochs: int) -> None:
    n, b = 6, 2
    logits = _logits(4, n, 3).detach()
    z = logits.softmax(dim=1)
    term = _te(n)
    order = [[0, 3], [5, 1], [2, 4]]
    for _ in range(epochs):
        for idx in order:
            _te_step(term, logits[idx], idx)
    assert (term.updates == epochs).all() and term.seen.item() == 0
    target, valid = term.targets(torch.arange(n))
    assert valid.all()
    assert torch.allclose(target, z, atol=1e-6)  # Z / (1 − α^t) undoes the zero start
    batch = {"idx_ulb": torch.tensor([4, 0])}
    value = term.compute({("student", "x_ulb_w"): _out(logits[[4, 0]])}, batch, WHERE)
    assert value.item() == pytest.approx(0.0, abs=1e-10)
    assert term.updates.max() == epochs and b * len(order) == n


def test_temporal_ensemble_first_epoch_gives_zero_loss_then_trains_the_student() -> None:
    term = _te(4)
    s = _logits(5, 2, 3)
    batch = {"idx_ulb": torch.tensor([1, 2])}
    outs = {("student", "x_ulb_w"): _out(s)}
    assert term.compute(outs, batch, WHERE).item() == 0.0
    _te_step(term, _logits(6, 2, 3).detach(), [1, 2])
    assert term.compute(outs, batch, WHERE).item() == 0.0  # mid-epoch: still no target
    _te_step(term, _logits(7, 2, 3).detach(), [0, 3])
    value = term.compute(outs, batch, WHERE)
    assert value.item() > 0
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_temporal_ensemble_epoch_ends_after_exactly_n_over_b_batches() -> None:
    term = _te(7)  # b = 2: 3 batches of 6 samples, the 7th sample dropped this epoch
    z = _logits(8, 7, 3).detach()
    for k, idx in enumerate([[0, 1], [2, 3]]):
        _te_step(term, z[idx], idx)
        assert term.updates.sum() == 0 and term.seen.item() == 2 * (k + 1)
    _te_step(term, z[[4, 5]], [4, 5])
    assert term.updates.tolist() == [1, 1, 1, 1, 1, 1, 0] and term.seen.item() == 0
    assert not term.epoch_seen.any() and term.epoch_preds.abs().sum() == 0
    assert torch.allclose(term.bank[:6], 0.4 * z[:6].softmax(dim=1))
    assert term.bank[6].abs().sum() == 0
    # next epoch sees 1..6: sample 0 keeps its Z and count, sample 6 gets its first update
    kept = term.bank[0].clone()
    z2 = _logits(9, 7, 3).detach()
    for idx in ([6, 1], [2, 3], [4, 5]):
        _te_step(term, z2[idx], idx)
    assert term.updates.tolist() == [1, 2, 2, 2, 2, 2, 1]
    assert torch.equal(term.bank[0], kept)
    assert torch.allclose(term.bank[6], 0.4 * z2[6].softmax(dim=0))
    expected = 0.6 * 0.4 * z[1].softmax(dim=0) + 0.4 * z2[1].softmax(dim=0)
    assert torch.allclose(term.bank[1], expected)


def test_temporal_ensemble_folds_at_the_streams_new_epoch_after_a_skipped_step() -> None:
    """The epoch's last batch was a skipped step, never recorded: the stream's next epoch
    starts, and the epoch is folded then, before the new epoch's first batch is recorded,
    never mixing two epochs' predictions of one sample."""
    term = _te(6)  # b = 2: an epoch is 3 batches
    z = _logits(10, 6, 3).detach()
    _te_step(term, z[[0, 1]], [0, 1])
    _te_step(term, z[[2, 3]], [2, 3])
    _te_step(term, None, [4, 5])  # a skipped step: drawn, never recorded
    assert term.updates.sum() == 0 and term.seen.item() == 4
    z2 = _logits(11, 6, 3).detach()
    _te_step(term, z2[[1, 4]], [1, 4])  # the new epoch: 1 repeats
    assert term.updates.tolist() == [1, 1, 1, 1, 0, 0]
    assert torch.allclose(term.bank[1], 0.4 * z[1].softmax(dim=0))  # epoch 1's, not epoch 2's
    assert term.epoch_seen.tolist() == [False, True, False, False, True, False]


def test_temporal_ensemble_loss_matches_its_loop() -> None:
    alpha, n, c = 0.6, 5, 3
    term = _te(n, c, alpha)
    history = [_logits(10 + e, n, c).detach() for e in range(3)]
    for e, z in enumerate(history):  # epochs 0..2 see 0..3 (b = 2 → 4 samples per epoch)
        for idx in ([0, 1], [2, 3]) if e != 1 else ([4, 1], [2, 3]):
            _te_step(term, z[idx], idx)
    idx = [0, 4, 1]
    s = _logits(20, 3, c)
    value = term.compute({("student", "x_ulb_w"): _out(s)}, {"idx_ulb": torch.tensor(idx)},
                         WHERE)
    seen_in = {0: [0, 2], 4: [1], 1: [0, 1, 2]}
    loop = 0.0
    for row, i in enumerate(idx):
        big_z, t = [0.0] * c, 0
        for e in seen_in[i]:
            p = _softmax(history[e][i].tolist())
            big_z = [alpha * a + (1 - alpha) * b for a, b in zip(big_z, p, strict=True)]
            t += 1
        target = [v / (1 - alpha**t) for v in big_z]
        p = _softmax(s[row].tolist())
        loop += sum((a - b) ** 2 for a, b in zip(p, target, strict=True)) / c
    assert value.item() == pytest.approx(loop / 3, rel=1e-5)


def test_temporal_ensemble_compute_is_pure_and_state_round_trips() -> None:
    term = _te(6)
    z = _logits(30, 6, 3).detach()
    for idx in ([0, 1], [2, 3], [4, 5], [1, 5]):  # one full epoch, then one batch
        _te_step(term, z[idx], idx)
    before = _buffers(term)
    assert set(before) == {"bank", "updates", "epoch_preds", "epoch_seen", "seen"}
    outs = {("student", "x_ulb_w"): _out(_logits(31, 2, 3))}
    batch = {"idx_ulb": torch.tensor([1, 4])}
    value = term.compute(outs, batch, WHERE)
    assert all(torch.equal(before[k], v) for k, v in term.state_dict().items())
    restored = _te(6)
    restored.load_state_dict(before)
    _POSITION[id(restored)] = _POSITION[id(term)]  # the stream's state resumes with the run
    assert torch.equal(restored.compute(outs, batch, WHERE), value)
    for t in (term, restored):  # the rest of the epoch folds identically after the resume
        _te_step(t, z[[0, 2]], [0, 2])
        _te_step(t, z[[3, 4]], [3, 4])
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in term.state_dict().items())
    assert term.updates.tolist() == [2] * 6


# --- ConfidenceMaskedCE -----------------------------------------------------------------------

def _fixmatch_outs(seed: int, b: int = 8, c: int = 4) -> tuple[dict, torch.Tensor, torch.Tensor]:
    s, w = _logits(seed, b, c), _logits(seed + 1, b, c, scale=4.0)
    return {("student", "x_ulb_s"): _out(s), ("student", "x_ulb_w"): _out(w)}, s, w


def test_fixmatch_matches_its_loop_divides_by_b_and_trains_only_the_strong_view() -> None:
    outs, s, w = _fixmatch_outs(40)
    tau = 0.9
    term = ConfidenceMaskedCE("fixmatch", Ref("x_ulb_s"), Ref("x_ulb_w"), threshold=tau)
    value = term.compute(outs, {}, WHERE)
    loop, kept = 0.0, 0
    for i in range(8):
        q = _softmax(w[i].tolist())
        if max(q) >= tau:
            kept += 1
            loop -= math.log(_softmax(s[i].tolist())[q.index(max(q))])
    assert 0 < kept < 8  # the seed gives a partial mask
    assert value.item() == pytest.approx(loop / 8, rel=1e-5)  # by B, not by `kept`
    assert term.metrics(outs, {}, WHERE)["mask"].item() == pytest.approx(kept / 8)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and w.grad is None
    result = Objective([term])(outs, {}, WHERE)
    assert result["fixmatch/mask"].item() == pytest.approx(kept / 8)
    assert Objective([term]).threshold == tau


def test_confidence_mask_thresholds_at_the_extremes() -> None:
    outs, s, w = _fixmatch_outs(50)
    never = ConfidenceMaskedCE("u", Ref("x_ulb_s"), Ref("x_ulb_w"), threshold=1.01)
    assert never.compute(outs, {}, WHERE).item() == 0.0
    assert never.metrics(outs, {}, WHERE)["mask"].item() == 0.0
    always = ConfidenceMaskedCE("u", Ref("x_ulb_s"), Ref("x_ulb_w"), threshold=0.0)
    plain = F.cross_entropy(s, w.argmax(dim=1))
    assert torch.allclose(always.compute(outs, {}, WHERE), plain)
    assert always.metrics(outs, {}, WHERE)["mask"].item() == 1.0


def test_pseudo_label_on_one_output_flows_only_through_the_student_side() -> None:
    s = _logits(60, 6, 3, scale=4.0)
    outs = {("student", "x_ulb_w"): _out(s)}
    term = ConfidenceMaskedCE("pl", Ref("x_ulb_w"), Ref("x_ulb_w"), threshold=0.95)
    value = term.compute(outs, {}, WHERE)
    assert value.item() > 0
    (grad,) = torch.autograd.grad(value, s)
    ref = s.detach().clone().requires_grad_()
    mask = (ref.softmax(1).max(1).values >= 0.95).float().detach()
    manual = (F.cross_entropy(ref, s.detach().argmax(1), reduction="none") * mask).sum() / 6
    manual.backward()
    assert torch.allclose(grad, ref.grad)


def test_uda_soft_targets_are_sharpened_and_masked_by_the_raw_confidence() -> None:
    c, tau, temp = 3, 0.8, 0.4
    w = torch.tensor([[3.0, 0.0, 0.0],  # raw max p ≈ 0.91: kept
                      [1.5, 0.0, 0.0],  # raw ≈ 0.69 < 0.8, sharpened ≈ 0.95 > 0.8: dropped
                      [0.0, 0.2, 4.0]], requires_grad=True)
    s = _logits(70, 3, c)
    outs = {("student", "x_ulb_s"): _out(s), ("student", "x_ulb_w"): _out(w)}
    term = ConfidenceMaskedCE("uda", Ref("x_ulb_s"), Ref("x_ulb_w"), threshold=tau, hard=False,
                              temperature=temp)
    value = term.compute(outs, {}, WHERE)
    loop = 0.0
    for i in range(3):
        if max(_softmax(w[i].tolist())) >= tau:
            t, p = _softmax(w[i].tolist(), temp), _softmax(s[i].tolist())
            loop -= sum(a * math.log(b) for a, b in zip(t, p, strict=True))
    assert max(_softmax(w[1].tolist(), temp)) > tau  # the sharpened row would have passed
    assert value.item() == pytest.approx(loop / 3, rel=1e-5)
    assert term.metrics(outs, {}, WHERE)["mask"].item() == pytest.approx(2 / 3)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and w.grad is None


# --- TSACrossEntropy --------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "log", "exp"])
def test_tsa_cross_entropy_drops_samples_above_the_threshold(schedule: str) -> None:
    k, b = 4, 8
    base = _logits(80, b, k, scale=3.0).detach()
    base[0, 0] += 10.0  # two samples already certain of their label
    base[5, 1] += 10.0
    s = base.requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    outs, batch = {("student", "x_lb"): _out(s)}, {"y_lb": y}
    term = TSACrossEntropy("sup", Ref("x_lb"), k, schedule)  # type: ignore[arg-type]
    at = Progress(40, 100, 10)
    a = {"linear": 0.4, "log": 1 - math.exp(-2.0), "exp": math.exp(-3.0)}[schedule]
    eta = a * (1 - 1 / k) + 1 / k
    total, kept = 0.0, 0
    for i in range(b):
        p = _softmax(s[i].tolist())[int(y[i])]
        if p <= eta:
            kept += 1
            total -= math.log(p)
    assert 0 < kept < b
    value = term.compute(outs, batch, at)
    assert value.item() == pytest.approx(total / kept, rel=1e-5)  # by the kept count
    assert term.metrics(outs, batch, at)["tsa_kept"].item() == pytest.approx(kept / b)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    end = term.compute(outs, batch, Progress(100, 100, 10))
    if schedule != "log":  # η = 1 at the end: plain CE ("log" ends e^-5 short of 1)
        assert torch.allclose(end, F.cross_entropy(s, y))
    else:
        assert term.metrics(outs, batch, Progress(100, 100, 10))["tsa_kept"].item() < 1


def test_tsa_with_every_sample_dropped_is_zero() -> None:
    s = torch.tensor([[5.0, 0.0], [0.0, 5.0]], requires_grad=True)
    term = TSACrossEntropy("sup", Ref("x_lb"), 2, "linear")
    outs, batch = {("student", "x_lb"): _out(s)}, {"y_lb": torch.tensor([0, 1])}
    assert term.compute(outs, batch, WHERE).item() == 0.0
    assert term.metrics(outs, batch, WHERE)["tsa_kept"].item() == 0.0
    with pytest.raises(ValueError, match="schedule"):
        TSACrossEntropy("sup", Ref("x_lb"), 2, "cosine")  # type: ignore[arg-type]


# --- MixMatch's losses ------------------------------------------------------------------------

def test_mixed_target_losses_match_their_loops_and_never_train_the_targets() -> None:
    s = _logits(90, 5, 4)
    targets = _logits(91, 5, 4).detach().softmax(dim=1).requires_grad_()
    outs, batch = {("student", "x_mix"): _out(s)}, {"p_mix": targets}
    ce = MixedTargetCE("mm_x", Ref("x_mix"), "p_mix")
    mse = MixedTargetMSE("mm_u", Ref("x_mix"), "p_mix", weight=75.0, ramp=Ramp("linear", 0.5))
    loop_ce = loop_mse = 0.0
    for i in range(5):
        p, t = _softmax(s[i].tolist()), targets[i].tolist()
        loop_ce -= sum(a * math.log(b) for a, b in zip(t, p, strict=True))
        loop_mse += sum((b - a) ** 2 for a, b in zip(t, p, strict=True))
    v_ce, v_mse = ce.compute(outs, batch, WHERE), mse.compute(outs, batch, WHERE)
    assert v_ce.item() == pytest.approx(loop_ce / 5, rel=1e-5)
    assert v_mse.item() == pytest.approx(loop_mse / 20, rel=1e-5)  # 1/(C·|U'|)
    (v_ce + v_mse).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and targets.grad is None
    assert mse.weight_at(Progress(10, 100, 10)) == pytest.approx(75.0 * 0.2)
    with pytest.raises(ValueError, match="differ in shape"):
        ce.compute(outs, {"p_mix": targets[:, :3]}, WHERE)
