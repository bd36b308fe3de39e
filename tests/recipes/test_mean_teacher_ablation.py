"""Mean Teacher's ablation axes (Tarvainen & Valpola 2017, §3.2): each option changes what it
names and nothing else, every term is non-zero with gradient into the student only."""

from __future__ import annotations

import math

import pytest
import torch

from auxilia.config import load_config
from auxilia.config_errors import ConfigError
from auxilia.data.types import DatasetSplits
from auxilia.engine.batches import make_batch
from auxilia.engine.context import RunContext, build_run
from auxilia.engine.setup import Setup, build_setup
from auxilia.engine.stepper import Stepper
from auxilia.parts import DROPOUT_LAYERS, EMASlot
from auxilia.terms import Progress, Ref, SoftmaxConsistency, SoftmaxKLConsistency
from auxilia.terms.semi import kl_consistency_scale

BATCH = 16
WHERE = Progress(30, 100, 10)
MT_TERMS = ("mt_consistency", "mt_consistency_lb")
REFERENCE = "{name: mean_teacher}"
VARIANTS = {  # ablation option -> the method settings
    "kl": "{name: mean_teacher, consistency: kl}",
    "teacher_dropout": "{name: mean_teacher, teacher_dropout: false}",
    "input_noise": "{name: mean_teacher, input_noise: false}",
    "ema_decay": "{name: mean_teacher, ema_decay: 0.0, rampup_decay: 0.0}",
}


def _config(method: str, *extra: str):
    return load_config(None, [f"method={method}", f"data.batch_size={BATCH}", "train.device=cpu",
                              "model.drop_rate=0.5", *extra])


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    """The embedded digits with 30 labels per class, the rest unlabeled, loaded once."""
    return build_setup(_config("supervised", "data.labels_per_class=30")).data


def _run(method: str, data: DatasetSplits) -> tuple[Setup, RunContext, dict]:
    setup = build_setup(_config(method), data)
    run = build_run(setup)
    run.set_modes()
    streams = setup.objective.streams
    batch = make_batch(setup, {n: torch.arange(s.size(BATCH)) for n, s in streams.items()})
    return setup, run, batch


def _logits(outputs: dict, model: str, view: str) -> torch.Tensor:
    return Ref(view, model=model).read(outputs)


# --- the KL distance ------------------------------------------------------------------------

def test_kl_consistency_is_the_authors_scaled_kl_of_teacher_to_student() -> None:
    """Against the formula, one sample and one class at a time: s·(1/B) Σ_i Σ_c p log(p/q),
    p the teacher's softmax, q the student's, s = 2(1 − 1/C)/C²."""
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(5, 7, generator=generator) * 2
    teacher = torch.randn(5, 7, generator=generator) * 2
    outputs = {("student", "x"): {"final": {"logits": student}},
               ("ema", "x"): {"final": {"logits": teacher}}}
    term = SoftmaxKLConsistency("kl", Ref("x"), Ref("x", model="ema"))
    total = 0.0
    for i in range(5):
        zs = [math.exp(v) for v in student[i].tolist()]
        zt = [math.exp(v) for v in teacher[i].tolist()]
        for c in range(7):
            p, q = zt[c] / sum(zt), zs[c] / sum(zs)
            total += p * math.log(p / q)
    expected = 2 * (1 - 1 / 7) / 7**2 * total / 5
    assert kl_consistency_scale(10) == pytest.approx(0.018)
    assert term.compute(outputs, {}, WHERE).item() == pytest.approx(expected, rel=1e-5)
    # not symmetric: KL(student ‖ teacher) is another number
    swapped = SoftmaxKLConsistency("kl", Ref("x", model="ema"), Ref("x"))
    assert swapped.compute(outputs, {}, WHERE).item() != pytest.approx(expected, rel=1e-3)
    mse = SoftmaxConsistency("mse", Ref("x"), Ref("x", model="ema"))
    assert mse.compute(outputs, {}, WHERE).item() != pytest.approx(expected, rel=1e-3)


def _shape(setup: Setup) -> dict:
    """What an objective is made of, besides its terms' classes."""
    objective = setup.objective
    return {"views": dict(objective.views), "slots": dict(objective.slots),
            "terms": {n: (t.weight, t.refs(), t.options()) for n, t in objective.terms.items()},
            "deploy": objective.deploy}


@pytest.mark.parametrize("option", sorted(VARIANTS))
def test_each_option_changes_only_what_it_names(option: str, digits: DatasetSplits) -> None:
    reference = _shape(build_setup(_config(REFERENCE), digits))
    setup = build_setup(_config(VARIANTS[option]), digits)
    varied = _shape(setup)
    kinds = {type(setup.objective.terms[n]) for n in MT_TERMS}
    assert kinds == {SoftmaxKLConsistency if option == "kl" else SoftmaxConsistency}
    ema, ref_ema = varied["slots"].pop("ema"), reference["slots"].pop("ema")
    changed = {f for f in ("decay", "rampup_decay", "dropout")
               if getattr(ema, f) != getattr(ref_ema, f)}
    assert changed == {"teacher_dropout": {"dropout"}, "ema_decay": {"decay", "rampup_decay"}
                       }.get(option, set())
    views = set(varied.pop("views").items()) ^ set(reference.pop("views").items())
    assert {k for k, _ in views} == ({"x_lb", "x_lb2", "x_ulb_w", "x_ulb_w2"}
                                     if option == "input_noise" else set())
    assert all(v == "weak" for k, v in views if v != "noisy")
    assert varied == reference


# --- teacher dropout ------------------------------------------------------------------------

def _twice(run: RunContext, batch: dict, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    stepper = Stepper(run)
    wanted = {model: ("x_ulb_w2",)}
    return tuple(_logits(stepper.forward(wanted, batch), model, "x_ulb_w2")  # type: ignore
                 for _ in range(2))


@pytest.mark.parametrize("teacher_dropout", [True, False])
def test_teacher_dropout_off_makes_only_the_teachers_forward_deterministic(
        teacher_dropout: bool, digits: DatasetSplits) -> None:
    method = f"{{name: mean_teacher, teacher_dropout: {str(teacher_dropout).lower()}}}"
    _, run, batch = _run(method, digits)
    a, b = _twice(run, batch, "ema")
    assert torch.equal(a, b) is (not teacher_dropout)
    s1, s2 = _twice(run, batch, "student")
    assert not torch.equal(s1, s2)  # the student keeps its dropout
    teacher = run.models["ema"]
    # BatchNorm still normalises with the batch's statistics: only dropout changed
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    drops = [m for m in teacher.modules() if isinstance(m, DROPOUT_LAYERS)]
    assert drops and all(m.training is teacher_dropout for m in drops)
    teacher.eval()  # as evaluation leaves it ...
    teacher.train()
    run.set_modes()  # ... and as the engine puts it back
    assert all(m.training is teacher_dropout for m in drops)


def test_ema_slot_dropout_is_unused_in_eval_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5),
                                torch.nn.BatchNorm1d(3))
    EMASlot(mode="eval", dropout=True).set_mode(model)
    assert not any(m.training for m in model.modules())
    EMASlot(mode="train", dropout=False).set_mode(model)
    assert [m.training for m in model.modules()] == [True, True, False, True]


# --- input noise ----------------------------------------------------------------------------

def _background_share(x: torch.Tensor) -> float:
    """The share of pixels exactly at the image's most common (background) value."""
    _, counts = x.flatten().unique(return_counts=True)
    return counts.max().item() / x.numel()


def test_input_noise_off_keeps_the_augmentation(digits: DatasetSplits) -> None:
    _, _, clean = _run("{name: mean_teacher, input_noise: false}", digits)
    _, _, noisy = _run(REFERENCE, digits)
    _, _, none = _run("{name: mean_teacher, noise: false}", digits)
    # the augmentation stays: two draws of one image differ, as they do with every noise on;
    # without any noise the two views are the same image
    assert not torch.equal(clean["x_lb"], clean["x_lb2"])
    assert torch.equal(none["x_lb"], none["x_lb2"])
    # no Gaussian noise: the background keeps one exact value (noisy: none shares it)
    assert _background_share(clean["x_ulb_w"]) > 0.3
    assert _background_share(noisy["x_ulb_w"]) < 0.01


def test_noise_off_with_input_noise_on_is_refused() -> None:
    with pytest.raises(ConfigError, match="noise=false already turns the input noise off"):
        _config("{name: mean_teacher, noise: false, input_noise: true}")
    with pytest.raises(ConfigError, match="consistency"):
        _config("{name: mean_teacher, consistency: l1}")


# --- every term, every variant: non-zero, gradient into the student only --------------------

@pytest.mark.parametrize("option", ["reference", *sorted(VARIANTS)])
def test_every_term_is_non_zero_with_gradient_into_the_student_only(
        option: str, digits: DatasetSplits) -> None:
    setup, run, batch = _run(VARIANTS.get(option, REFERENCE), digits)
    outputs = Stepper(run).forward(setup.objective.inputs(), batch)
    teacher = run.models["ema"]
    assert not any(p.requires_grad for p in teacher.parameters())
    for name in MT_TERMS:
        term = setup.objective.terms[name]
        loss = term.compute(outputs, batch, WHERE)
        assert loss.item() > 0, name
        run.student.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        grads = [p.grad for p in run.student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
        assert all(p.grad is None for p in teacher.parameters()), name
