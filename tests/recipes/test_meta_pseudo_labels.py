"""Meta Pseudo Labels: the sign of the feedback on a toy problem, where each loss sends its
gradient, the student's wait steps, the baseline's state, and runs end to end."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.context import build_run
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import Stepper, forward_all
from auxilia.parts import MAIN
from auxilia.recipes.base import RecipeContext
from auxilia.recipes.meta_pseudo_labels import (
    TEACHER,
    MetaPseudoLabelsParams,
    MetaPseudoLabelsStep,
    meta_pseudo_labels,
)
from auxilia.recipes.mpl_terms import FeedbackCE, PseudoLabels
from auxilia.terms import Objective, Progress

TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "data.batch_size=16",
        "train.device=cpu", "data.labels_per_class=5", "model.name=small_cnn"]
LOGGED = {"student_ce_u", "teacher_ce", "teacher_uda", "teacher_mpl", "h", "loss"}


# --- a toy problem: linear teacher and student on 2-D points ---------------------------------

class Linear(nn.Module):
    """A linear classifier answering the multi-exit contract (``{"final": {"logits"}}``)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        return {"final": {"logits": x @ self.weight}}


class ToyTools:
    """What the engine hands a step strategy, over two linear models: the student's optimizer
    is plain SGD at ``lr``; the teacher's step only records its gradient (``grads``)."""

    def __init__(self, objective: Objective, student: torch.Tensor, teacher: torch.Tensor,
                 lr: float) -> None:
        self.objective = objective
        self.models = {"student": Linear(student), TEACHER: Linear(teacher)}
        self.lr = lr
        self.grads: dict[str, dict[str, torch.Tensor | None]] = {}

    def autocast(self) -> nullcontext[None]:
        return nullcontext()

    def forward(self, wanted: Mapping[str, Sequence[str]], batch: Mapping[str, torch.Tensor]
                ) -> object:
        return forward_all(self.models, wanted, batch)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[str] | None = None,
                      losses: object = None) -> bool:
        for model in self.models.values():
            model.weight.grad = None
        loss.backward()
        (name,) = optimizers or [MAIN]
        self.grads[name] = {n: m.weight.grad for n, m in self.models.items()}
        if name == MAIN:
            with torch.no_grad():
                self.models["student"].weight -= self.lr * self.models["student"].weight.grad
        return True


def toy_problem(classes: int = 3, unlabeled: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])[:classes]
    y_lb = torch.arange(classes).repeat(4)
    x_lb = centres[y_lb] + 0.8 * torch.randn(len(y_lb), 2, generator=generator)
    x_ulb = torch.randn(unlabeled, 2, generator=generator) * 1.5
    ones = torch.ones(len(x_lb), 1)
    return {"x_lb": torch.cat([x_lb, ones], 1), "y_lb": y_lb,
            "x_ulb_w": torch.cat([x_ulb, torch.ones(unlabeled, 1)], 1),
            "x_ulb_s": torch.cat([x_ulb, torch.ones(unlabeled, 1)], 1)}


def toy_objective(**params: object) -> Objective:
    """The recipe's own objective, the feedback term alone on the teacher (no CE_l, no UDA)."""
    ctx = RecipeContext(stages=(), stage_channels={}, stage_strides={}, num_classes=3,
                        num_unlabeled=3)
    settings = {"teacher_ce_weight": 0.0, "weight": 0.0, "wait": 0.0, "label_smoothing": 0.0,
                "baseline_decay": 1.0, **params}
    return meta_pseudo_labels(MetaPseudoLabelsParams(**settings), ctx)  # type: ignore[arg-type]


STUDENT0 = torch.tensor([[0.3, -0.2, 0.1], [0.1, 0.4, -0.3], [0.0, 0.2, -0.1]])
TEACHER0 = torch.tensor([[0.5, -0.4, 0.2], [-0.3, 0.6, 0.1], [0.1, -0.2, 0.3]])
LR = 0.5


def expected_loss_gradient(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """∇_T E_{ŷ ~ T(x_u)}[L_l(θ_S'(ŷ))], exactly: every labelling of the unlabeled batch, each
    weighted by its probability under the teacher, the student's SGD step differentiable."""
    teacher = TEACHER0.clone().requires_grad_(True)
    probs = (batch["x_ulb_s"] @ teacher).softmax(1)
    expected = torch.zeros(())
    n, k = probs.shape
    for labels in itertools.product(range(k), repeat=n):
        y = torch.tensor(labels)
        student = STUDENT0.clone().requires_grad_(True)
        ce_u = nn.functional.cross_entropy(batch["x_ulb_s"] @ student, y)
        (grad,) = torch.autograd.grad(ce_u, student)
        after = nn.functional.cross_entropy(batch["x_lb"] @ (STUDENT0 - LR * grad), batch["y_lb"])
        expected = expected + probs[torch.arange(n), y].prod() * after
    (gradient,) = torch.autograd.grad(expected, teacher)
    return gradient


def feedback_gradient(batch: dict[str, torch.Tensor], draws: int) -> torch.Tensor:
    """The teacher's gradient from the recipe's step (feedback term alone), averaged over
    ``draws`` sampled pseudo-labellings, the student reset to the same weights each time."""
    objective = toy_objective()
    total = torch.zeros_like(TEACHER0)
    for step in range(draws):
        tools = ToyTools(objective, STUDENT0, TEACHER0, LR)
        objective.step(tools, batch, Progress(step, 10**6, 1))
        total += tools.grads[TEACHER][TEACHER]
    return total / draws


def test_the_feedback_moves_the_teacher_to_lower_the_students_labeled_loss() -> None:
    """Pham et al.'s h = CE_old − CE_new: descending on h·CE(T(x_u), ŷ) descends on the
    student's expected labeled loss after its step; the released CE_new − CE_old ascends."""
    batch = toy_problem()
    exact = expected_loss_gradient(batch).flatten()
    ours = feedback_gradient(batch, 150).flatten()
    released = -ours  # CE_new − CE_old: the same draws, h negated
    cosine = nn.functional.cosine_similarity
    assert exact.norm() > 1e-3
    assert cosine(ours, exact, dim=0) > 0.9
    assert cosine(released, exact, dim=0) < -0.9
    # a small step along the feedback lowers the expected post-step labeled loss
    assert float(exact @ ours) > 0


def test_h_is_the_drop_minus_the_baseline_of_earlier_drops() -> None:
    """FeedbackCE's h is CE_old − CE_new minus the old baseline; the baseline then moves."""
    term = FeedbackCE("f", objective_teacher_ref(), PseudoLabels(), baseline_decay=0.9)
    h = term.feedback(torch.tensor(0.5))
    assert float(h) == pytest.approx(0.5)
    term.after_step({(TEACHER, "mpl_feedback"): {"final": {"drop": torch.tensor(0.5)}}}, {},
                    Progress(0, 1, 1))
    assert float(term.baseline) == pytest.approx(0.05)
    assert float(term.feedback(torch.tensor(0.5))) == pytest.approx(0.45)


def objective_teacher_ref():
    return toy_objective().terms["teacher_mpl"].teacher


def test_sampled_labels_follow_the_softmax_and_argmax_is_the_mode() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(4000, 1)
    drawn = PseudoLabels("sample", seed=1).draw(logits, 5)
    share = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert torch.allclose(share, logits[0].softmax(0), atol=0.03)
    assert torch.equal(drawn, PseudoLabels("sample", seed=1).draw(logits, 5))  # seeded
    assert not torch.equal(drawn, PseudoLabels("sample", seed=1).draw(logits, 6))
    assert (PseudoLabels("argmax").draw(logits, 5) == 0).all()


def test_each_side_sends_gradient_to_its_own_model_only() -> None:
    batch = toy_problem()
    tools = ToyTools(toy_objective(teacher_ce_weight=1.0, weight=1.0, threshold=0.0), STUDENT0,
                     TEACHER0, LR)
    result = tools.objective.step(tools, batch, Progress(0, 10, 1))
    assert tools.grads[MAIN][TEACHER] is None and tools.grads[MAIN]["student"].abs().sum() > 0
    assert tools.grads[TEACHER]["student"] is None
    assert tools.grads[TEACHER][TEACHER].abs().sum() > 0
    assert set(result.losses) >= LOGGED
    for name in ("student_ce_u", "teacher_ce", "teacher_uda", "teacher_mpl"):
        assert float(result.losses[name]) > 0, name


def test_the_student_waits_and_the_teacher_learns_without_feedback() -> None:
    batch = toy_problem()
    objective = toy_objective(wait=0.5, teacher_ce_weight=1.0)
    tools = ToyTools(objective, STUDENT0, TEACHER0, LR)
    result = objective.step(tools, batch, Progress(4, 10, 1))  # 4 < 0.5 × 10
    assert MAIN not in tools.grads  # no student step
    assert torch.equal(tools.models["student"].weight, STUDENT0)
    assert float(result.losses["h"]) == 0 and (TEACHER, "mpl_feedback") not in result.outputs
    assert tools.grads[TEACHER][TEACHER].abs().sum() > 0  # CE_l alone
    tools = ToyTools(objective, STUDENT0, TEACHER0, LR)
    objective.step(tools, batch, Progress(5, 10, 1))
    assert MAIN in tools.grads and not torch.equal(tools.models["student"].weight, STUDENT0)


def test_bad_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="pseudo_labels"):
        load_config(None, ["method=[{name: meta_pseudo_labels, pseudo_labels: mode}]"])
    with pytest.raises(ValueError, match="wait"):
        load_config(None, ["method=[{name: meta_pseudo_labels, wait: 1.5}]"])


# --- the engine: a digits run ---------------------------------------------------------------

def _config(runs: Path, name: str, *extra: str):
    return load_config(None, [*TINY, f"run.dir={runs}", f"run.name={name}",
                              "method=[{name: meta_pseudo_labels, mu: 1, wait: 0.25, "
                              "ema_decay: 0.9, teacher_lr: 0.02}]", *extra])


def test_a_real_step_commits_student_teacher_and_ema(tmp_path: Path) -> None:
    run = build_run(build_setup(_config(tmp_path, "s", "train.steps=8")))
    run.set_modes()
    models = run.models
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in models.items()}
    stepper = Stepper(run)
    waiting = stepper.step(run.batches.next(0), Progress(0, 8, 4))
    assert waiting.stepped == {TEACHER: True}
    assert all(torch.equal(a, b) for a, b in zip(before["student"],
                                                models["student"].parameters(), strict=True))
    outcome = stepper.step(run.batches.next(1), Progress(2, 8, 4))
    assert outcome.stepped == {MAIN: True, TEACHER: True}
    for name in ("student", TEACHER, "ema"):
        assert not all(torch.equal(a, b) for a, b in zip(before[name], models[name].parameters(),
                                                         strict=True)), name
    assert all(p.grad is None and not p.requires_grad for p in models["ema"].parameters())
    assert run.optimizers[TEACHER].optim.lr == 0.02
    assert float(run.objective.terms["teacher_mpl"].baseline) != 0  # h's baseline moved


def test_a_run_writes_its_folder_and_resumes_exactly(tmp_path: Path) -> None:
    config = _config(tmp_path, "ref", "train.steps=8", "train.eval_every=4")
    reference = train(config)
    assert (reference.run_dir / "summary.json").is_file()
    lines = (reference.run_dir / "metrics.jsonl").read_text()
    assert all(f'"train/{key}"' in lines for key in LOGGED - {"loss"})

    def stop(step: int, losses: dict[str, float]) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    again = _config(tmp_path, "r", "train.steps=8", "train.eval_every=4")
    with pytest.raises(KeyboardInterrupt):
        train(again, callbacks=[stop])
    resumed = train(again, resume=True)
    a = load_checkpoint(reference.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert "terms.teacher_mpl.baseline" in a["objective"]
    for key in ("model", "objective"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    assert set(a["slots"]) >= {TEACHER, "student"}
    for slot, state in a["slots"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, b["slots"][slot][name]), f"{slot}.{name}"


def test_the_step_strategy_is_the_recipes() -> None:
    assert isinstance(toy_objective().step, MetaPseudoLabelsStep)
