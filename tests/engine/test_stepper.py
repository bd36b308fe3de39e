"""The stepper commits state per optimizer: a step with two optimizers whose second half is
skipped keeps the first half's update, the EMA of the model that stepped, the banks of the
terms that read it, and puts back the buffers of the model that did not step; the fp16
gradient scaler updates once per step however many backward calls the step made."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import pytest
import torch

from auxilia.engine.batches import make_batch
from auxilia.engine.context import build_run
from auxilia.engine.runlog import RunFolder
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import Stepper
from auxilia.parts import EMASlot, OptimizerSpec, PeerSlot, StepResult, StepTools
from auxilia.recipes import RECIPES
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams
from auxilia.terms import Batch, CrossEntropy, Objective, Outputs, Progress, Ref


class Recording(CrossEntropy):
    """Cross-entropy that records each committed step it is told of (a bank's stand-in)."""

    def __init__(self, name: str, ref: Ref) -> None:
        super().__init__(name, ref)
        self.committed = 0

    def after_step(self, outputs: Outputs, batch: Batch, progress: Progress) -> None:
        self.committed += 1


class PeerGoesWrong:
    """The student steps on its CE; then the peer's loss is NaN (``poison``) or finite."""

    poison = True

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        terms = tools.objective.terms
        with tools.autocast():
            outputs = tools.forward({"student": ["x_lb"], "ema": ["x_lb"]}, batch)
            ce = terms["ce"].compute(outputs, batch, progress)
        tools.backward_step(ce, ["student"])
        with tools.autocast():
            outputs.update(tools.forward({"peer": ["x_lb"]}, batch))
            ce_peer = terms["ce_peer"].compute(outputs, batch, progress)
        tools.backward_step(ce_peer * (float("nan") if self.poison else 1.0), ["peer"])
        return StepResult({"loss": (ce + ce_peer).detach()}, outputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerGoesWrong)

    def __hash__(self) -> int:
        return hash(PeerGoesWrong)


def halves(params: RecipeParams, ctx: RecipeContext) -> Objective:
    return Objective([Recording("ce", Ref("x_lb")),
                      Recording("ce_peer", Ref("x_lb", model="peer")),
                      Recording("ce_ema", Ref("x_lb", model="ema"))], views={"x_lb": "weak"},
                     slots={"peer": PeerSlot(), "ema": EMASlot(decay=0.5, warmup=False)},
                     optimizers={"student": OptimizerSpec(("student", "objective")),
                                 "peer": OptimizerSpec(("peer",))},
                     step=PeerGoesWrong())


def _register(monkeypatch: pytest.MonkeyPatch, name: str,
              build: Callable[[RecipeParams, RecipeContext], Objective]) -> None:
    params = type(f"{name}Params", (RecipeParams,), {"__annotations__": {"name": Literal[name]},
                                                      "name": name})
    monkeypatch.setitem(RECIPES, name, Recipe(params, build, f"test method {name}"))


def _run(tiny_config, monkeypatch: pytest.MonkeyPatch, *extra: str):
    _register(monkeypatch, "halves", halves)
    run = build_run(build_setup(tiny_config("method=halves", *extra)))
    run.io.folder = RunFolder(Path(run.config.run.dir) / "x")
    run.set_modes()
    return run


def _copy(module: torch.nn.Module, what: str) -> list[torch.Tensor]:
    return [t.detach().clone() for t in getattr(module, what)()]


def _same(a: list[torch.Tensor], module: torch.nn.Module, what: str) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, getattr(module, what)(), strict=True))


def test_a_skipped_half_commits_only_what_stepped(tiny_config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tiny_config, monkeypatch, "train.on_nonfinite=skip")
    student, peer, ema = run.student, run.models["peer"], run.models["ema"]
    before = {n: (_copy(m, "parameters"), _copy(m, "buffers"))
              for n, m in (("student", student), ("peer", peer), ("ema", ema))}
    outcome = Stepper(run).step(make_batch(run.setup, torch.arange(32)), Progress(0, 6, 3))
    assert outcome.stepped == {"student": True, "peer": False}
    assert not outcome.committed and outcome.nonfinite == "loss is nan"
    assert run.loop.skipped_steps == 1
    assert not _same(before["student"][0], student, "parameters")  # the first half stepped
    assert not _same(before["student"][1], student, "buffers")  # and keeps its statistics
    assert _same(before["peer"][0], peer, "parameters")  # the second half did not
    assert _same(before["peer"][1], peer, "buffers")  # and its statistics are put back
    assert not _same(before["ema"][0], ema, "parameters")  # the EMA followed the student
    terms = run.objective.terms
    assert (terms["ce"].committed, terms["ce_ema"].committed, terms["ce_peer"].committed) == (
        1, 1, 0)


def test_both_halves_commit_when_both_step(tiny_config,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PeerGoesWrong, "poison", False)
    run = _run(tiny_config, monkeypatch, "train.on_nonfinite=skip")
    outcome = Stepper(run).step(make_batch(run.setup, torch.arange(32)), Progress(0, 6, 3))
    assert outcome.committed and outcome.nonfinite is None and run.loop.skipped_steps == 0
    assert [t.committed for t in run.objective.terms.values()] == [1, 1, 1]


def test_the_fp16_scaler_updates_once_per_step(tiny_config,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PeerGoesWrong, "poison", False)
    run = _run(tiny_config, monkeypatch, "train.amp=true", "train.amp_dtype=float16")
    assert run.scaler.is_enabled()
    updates = []
    real = run.scaler.update
    monkeypatch.setattr(run.scaler, "update", lambda *a: updates.append(1) or real(*a))
    stepper = Stepper(run)
    for step in range(2):
        stepper.step(make_batch(run.setup, torch.arange(32), step), Progress(step, 6, 3))
    assert len(updates) == 2  # two steps of two backward calls each
