"""The engine's extension points, each driven by a small method written here: model slots
(peer, EMA, frozen), streams, optimizers and a replaced step strategy; plus the promises they
rest on (same augmentation across methods, state touched by committed steps only, fp16
overflows left to the scaler, everything checkpointed by name and resumed exactly)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import pytest
import torch

from auxilia.engine import batches as batches_module
from auxilia.engine import train
from auxilia.engine.batches import make_batch
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.context import build_run
from auxilia.engine.runlog import RunFolder
from auxilia.engine.setup import build_setup
from auxilia.engine.stepper import Stepper, set_learning_rates
from auxilia.models.heads import HeadSpec
from auxilia.parts import (
    EMASlot,
    FrozenSlot,
    OptimizerSpec,
    PeerSlot,
    StepResult,
    StepTools,
    StreamSpec,
    ema_update,
)
from auxilia.recipes import RECIPES
from auxilia.recipes.base import Recipe, RecipeContext, RecipeParams
from auxilia.terms import CrossEntropy, KLDistill, Objective, Progress, Ref

STEPS = ["train.steps=6", "train.eval_every=3", "data.batch_size=32"]


def _register(monkeypatch: pytest.MonkeyPatch, name: str,
              build: Callable[[RecipeParams, RecipeContext], Objective]) -> None:
    params = type(f"{name}Params", (RecipeParams,), {"__annotations__": {"name": Literal[name]},
                                                      "name": name})
    monkeypatch.setitem(RECIPES, name, Recipe(params, build, f"test method {name}"))


def _interrupted_then_resumed(config, at: int):
    def stop(step: int, losses: dict[str, float]) -> None:
        if step == at:
            signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[stop])
    return train(config, resume=True)


def _same_checkpoints(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for key in ("model", "objective"):
        for name, tensor in ca[key].items():
            assert torch.equal(tensor, cb[key][name]), f"{key}.{name}"
    assert ca["slots"].keys() == cb["slots"].keys()
    for slot, state in ca["slots"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, cb["slots"][slot][name]), f"{slot}.{name}"
    assert ca["streams"] == cb["streams"]
    assert ca["loop"]["evals"] == cb["loop"]["evals"]


# -- the same images and initial weights whatever the method ------------------------------------

@pytest.mark.parametrize("step", [0, 7])
def test_every_method_sees_the_same_x_lb_at_every_step(tiny_config, step: int) -> None:
    batches = {}
    for method in ("supervised", "deep_supervision", "byot", "cds"):
        setup = build_setup(tiny_config(f"method={method}"))
        batches[method] = make_batch(setup, torch.arange(32), step)["x_lb"]
    assert torch.equal(batches["supervised"], batches["deep_supervision"])
    assert torch.equal(batches["supervised"], batches["byot"])
    # CDS's x_lb is the same weak crop with a Cutout square (set to 0, the mean) on top
    kept = batches["cds"] != 0
    assert kept.float().mean() > 0.5
    assert torch.equal(batches["cds"][kept], batches["supervised"][kept])
    other = make_batch(setup, torch.arange(32), step + 1)["x_lb"]
    assert not torch.equal(other, batches["cds"])  # a new draw at every step


def test_views_are_the_same_in_training_across_methods(tiny_config,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[torch.Tensor]] = {}
    real = batches_module.make_batch

    def spy(setup, indices, step, ranks=None):
        batch = real(setup, indices, step, ranks)
        seen.setdefault(setup.config.method[0].name, []).append(batch["x_lb"].clone())
        return batch

    monkeypatch.setattr(batches_module, "make_batch", spy)
    for method in ("supervised", "deep_supervision"):
        train(tiny_config(f"method={method}", f"run.name={method}", "train.steps=4"))
    assert all(torch.equal(a, b) for a, b in zip(seen["supervised"], seen["deep_supervision"],
                                                 strict=True))


# -- state is updated only by committed steps ---------------------------------------------------

def test_a_nan_image_with_skip_leaves_the_prediction_bank_untouched(
        tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    real, first_rows = batches_module.make_batch, []

    def poisoned(setup, indices, step, ranks=None):
        batch = real(setup, indices, step, ranks)
        if step == 0:
            batch["x_lb"][0] = float("nan")  # one bad image poisons its whole batch's logits
            first_rows.append(batch["idx_lb"].clone())
        return batch

    monkeypatch.setattr(batches_module, "make_batch", poisoned)
    result = train(tiny_config("method=ps_kd", "train.on_nonfinite=skip", "train.steps=2",
                               "data.batch_size=16"))
    assert result.summary["skipped_steps"] == 1
    bank = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["objective"]
    key = next(k for k in bank if k.endswith(".seen"))
    seen, rows = bank[key], first_rows[0]
    assert not seen[rows].any()  # the skipped step wrote nothing
    assert seen.sum() == 16  # the committed second step wrote its own rows
    assert torch.isfinite(bank[key.replace("seen", "bank")]).all()


# -- fp16: overflows are the scaler's -----------------------------------------------------------

def _inf_gradient_at(monkeypatch: pytest.MonkeyPatch, bad_step: int) -> None:
    real, calls = batches_module.make_batch, [0]

    def hooked(setup, indices, step, ranks=None):
        if calls[0] == 0:
            param = next(setup.model.parameters())
            param.register_hook(lambda g: g * float("inf") if steps[0] == bad_step else g)
        calls[0] += 1
        steps[0] = step
        return real(setup, indices, step, ranks)

    steps = [0]
    monkeypatch.setattr(batches_module, "make_batch", hooked)


@pytest.mark.parametrize("extra", [["optim.grad_clip=1.0"], ["train.on_nonfinite=skip"], []])
def test_an_fp16_overflow_is_left_to_the_scaler(tiny_config, monkeypatch: pytest.MonkeyPatch,
                                                extra: list[str]) -> None:
    _inf_gradient_at(monkeypatch, bad_step=2)
    result = train(tiny_config("train.amp=true", "train.amp_dtype=float16", "train.steps=5",
                               *extra))
    assert result.summary["steps"] == 5
    assert result.summary["skipped_steps"] == 0  # not a non-finite step: nothing aborted
    assert result.summary["scaler_skipped_steps"] == 1
    scaler = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["scaler"]
    assert scaler["scale"] == 2.0**16 * 0.5  # backed off once, saved for an exact resume


def test_fp16_resume_is_exact(tiny_config) -> None:
    fp16 = ["train.amp=true", "train.amp_dtype=float16", *STEPS]
    reference = train(tiny_config(*fp16, "run.name=ref"))
    resumed = _interrupted_then_resumed(tiny_config(*fp16, "run.name=r"), at=2)
    _same_checkpoints(resumed.run_dir / "checkpoints" / "last.pt",
                      reference.run_dir / "checkpoints" / "last.pt")


# -- model slots ------------------------------------------------------------------------------

def mutual(params: RecipeParams, ctx: RecipeContext) -> Objective:
    """A peer trained alongside, with its own auxiliary head, and an EMA teacher."""
    return Objective(
        [CrossEntropy("ce", Ref("x_lb")), CrossEntropy("ce_peer", Ref("x_lb", model="peer")),
         CrossEntropy("ce_peer_s1", Ref("x_lb", "s1", model="peer")),
         KLDistill("kd_ema", Ref("x_lb"), Ref("x_lb", model="ema"), 2.0)],
        [HeadSpec("s1", "logits", "classifier", model="peer")], {"x_lb": "weak"},
        slots={"peer": PeerSlot(), "ema": EMASlot(decay=0.5, warmup=False),
               "init": FrozenSlot()})


def test_slots_are_built_run_and_trained_as_they_declare(tiny_config,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "mutual", mutual)
    run = build_run(build_setup(tiny_config("method=mutual")))
    run.io.folder = RunFolder(Path(run.config.run.dir) / "x")
    assert list(run.models) == ["student", "peer", "ema", "init"]
    assert "s1__logits" in run.models["peer"].heads and not run.student.heads
    trained = {id(p) for g in run.optimizers["main"].torch.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in run.models["peer"].parameters())
    assert not any(id(p) in trained for p in run.models["ema"].parameters())
    run.set_modes()
    assert run.models["peer"].training and not run.models["ema"].training
    student0 = {k: v.clone() for k, v in run.student.state_dict().items()}
    ema0 = {k: v.clone() for k, v in run.models["ema"].state_dict().items()}
    batch = make_batch(run.setup, torch.arange(32))
    stepper = Stepper(run)
    outputs = stepper.forward({"student": ["x_lb"], "ema": ["x_lb"]}, batch)
    assert outputs[("student", "x_lb")]["final"]["logits"].requires_grad
    assert not outputs[("ema", "x_lb")]["final"]["logits"].requires_grad  # no_grad teacher
    assert stepper.step(batch, Progress(0, 6, 3)).committed  # the EMA follows at once
    for name, value in run.models["ema"].state_dict().items():  # θ ← ½θ_ema + ½θ_student
        if value.is_floating_point() and "running" not in name:
            expected = 0.5 * ema0[name] + 0.5 * run.student.state_dict()[name]
            assert torch.allclose(value, expected, atol=1e-6), name
    frozen = run.models["init"].state_dict()
    assert all(torch.equal(frozen[k], student0[k]) for k in student0)  # never trained


def test_slots_are_checkpointed_by_name_and_resumed_exactly(
        tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "mutual", mutual)
    reference = train(tiny_config("method=mutual", *STEPS, "run.name=ref"))
    resumed = _interrupted_then_resumed(tiny_config("method=mutual", *STEPS, "run.name=r"), 2)
    last = resumed.run_dir / "checkpoints" / "last.pt"
    assert set(load_checkpoint(last)["slots"]) == {"peer", "ema"}  # frozen slots are rebuilt
    _same_checkpoints(last, reference.run_dir / "checkpoints" / "last.pt")


def test_ema_update_is_the_papers_formula() -> None:
    ema, source = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    torch.nn.init.normal_(source.weight)
    source.running_mean.fill_(2.0)
    before = ema.weight.detach().clone()
    ema_update(ema, source, 0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * source.weight)
    assert torch.equal(ema.running_mean, source.running_mean)  # buffers copied
    assert EMASlot(decay=0.99).decay_at(1) == pytest.approx(0.5)  # min(1 − 1/(t+1), α)
    assert EMASlot(decay=0.99).decay_at(10_000) == pytest.approx(0.99)


# -- streams ----------------------------------------------------------------------------------

def two_streams(params: RecipeParams, ctx: RecipeContext) -> Objective:
    """A second labeled stream with its own sampler and batch size."""
    return Objective([CrossEntropy("ce", Ref("x_lb")),
                      CrossEntropy("ce_extra", Ref("x_ex"), target="y_ex", weight=0.5)],
                     views={"x_lb": "weak", "x_ex": "color"},
                     streams={"extra": StreamSpec(keys="ex", batch_size=8)})


def test_a_declared_stream_has_its_own_sampler_and_is_checkpointed_by_name(
        tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "two_streams", two_streams)
    run = build_run(build_setup(tiny_config("method=two_streams", *STEPS)))
    assert run.streams["extra"].batch_size == 8 and run.labeled.batch_size == 32
    batch = make_batch(run.setup, {n: next(s) for n, s in run.streams.items()})
    assert batch["x_ex"].shape[0] == batch["y_ex"].shape[0] == batch["idx_ex"].shape[0] == 8
    assert not torch.equal(batch["idx_ex"], batch["idx_lb"][:8])  # its own order
    reference = train(tiny_config("method=two_streams", *STEPS, "run.name=ref"))
    resumed = _interrupted_then_resumed(tiny_config("method=two_streams", *STEPS,
                                                    "run.name=r"), 2)
    streams = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["streams"]
    assert set(streams) == {"labeled", "extra"}
    _same_checkpoints(resumed.run_dir / "checkpoints" / "last.pt",
                      reference.run_dir / "checkpoints" / "last.pt")


def test_an_unlabeled_view_without_its_stream_names_the_streams(
        tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_stream(params: RecipeParams, ctx: RecipeContext) -> Objective:
        return Objective([CrossEntropy("ce", Ref("x_lb"))], views={"x_lb": "weak",
                                                                    "x_ulb_w": "weak"})

    _register(monkeypatch, "no_stream", no_stream)
    with pytest.raises(ValueError, match="'x_ulb_w' belongs to no stream.*x_lb"):
        build_setup(tiny_config("method=no_stream"))


# -- optimizers and a replaced step strategy ----------------------------------------------------

class TwoPhases:
    """Phase 1 trains the student on its CE; phase 2 the peer on its own, each optimizer alone."""

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        terms = tools.objective.terms
        with tools.autocast():
            outputs = tools.forward({"student": ["x_lb"]}, batch)
            ce = terms["ce"].compute(outputs, batch, progress)
        first = tools.backward_step(ce, ["student"])
        with tools.autocast():
            outputs.update(tools.forward({"peer": ["x_lb"]}, batch))
            ce_peer = terms["ce_peer"].compute(outputs, batch, progress)
        second = tools.backward_step(ce_peer, ["peer"])
        assert first and second
        losses = {"loss": (ce + ce_peer).detach(), "ce": ce.detach(), "ce_peer": ce_peer.detach()}
        return StepResult(losses, outputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TwoPhases)

    def __hash__(self) -> int:
        return hash(TwoPhases)


def two_phases(params: RecipeParams, ctx: RecipeContext) -> Objective:
    return Objective([CrossEntropy("ce", Ref("x_lb")),
                      CrossEntropy("ce_peer", Ref("x_lb", model="peer"))], views={"x_lb": "weak"},
                     slots={"peer": PeerSlot()},
                     optimizers={"student": OptimizerSpec(("student", "objective")),
                                 "peer": OptimizerSpec(("peer",), optim={"lr": 0.01},
                                                       schedule={"name": "constant"})},
                     step=TwoPhases())


def test_two_optimizers_and_a_two_phase_step(tiny_config,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "two_phases", two_phases)
    run = build_run(build_setup(tiny_config("method=two_phases", *STEPS,
                                            "schedule.name=cosine")))
    run.io.folder = RunFolder(Path(run.config.run.dir) / "x")
    assert set(run.optimizers) == {"student", "peer"}
    peer0 = [p.detach().clone() for p in run.models["peer"].parameters()]
    set_learning_rates(run, 5)
    assert run.optimizers["peer"].torch.param_groups[0]["lr"] == 0.01  # its own constant lr
    assert run.optimizers["student"].torch.param_groups[0]["lr"] < run.config.optim.lr
    batch = make_batch(run.setup, torch.arange(32))
    assert Stepper(run).step(batch, Progress(5, 6, 3)).stepped == {"student": True,
                                                                    "peer": True}
    assert not all(torch.equal(a, b) for a, b in zip(peer0, run.models["peer"].parameters(),
                                                     strict=True))
    reference = train(tiny_config("method=two_phases", *STEPS, "run.name=ref"))
    resumed = _interrupted_then_resumed(tiny_config("method=two_phases", *STEPS,
                                                    "run.name=r"), 2)
    last = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert set(last["optimizers"]) == {"student", "peer"}
    _same_checkpoints(resumed.run_dir / "checkpoints" / "last.pt",
                      reference.run_dir / "checkpoints" / "last.pt")


def test_every_trainable_parameter_has_exactly_one_optimizer(
        tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    def orphan(params: RecipeParams, ctx: RecipeContext) -> Objective:
        return two_phases(params, ctx) | Objective(optimizers={})

    def twice(params: RecipeParams, ctx: RecipeContext) -> Objective:
        objective = two_phases(params, ctx)
        objective.optimizers["peer"] = OptimizerSpec(("peer", "student"))
        return objective

    def missing(params: RecipeParams, ctx: RecipeContext) -> Objective:
        objective = two_phases(params, ctx)
        del objective.optimizers["peer"]
        return objective

    _register(monkeypatch, "orphan", orphan)
    _register(monkeypatch, "twice", twice)
    _register(monkeypatch, "missing", missing)
    build_run(build_setup(tiny_config("method=orphan")))  # the merge kept both optimizers
    with pytest.raises(ValueError, match="optimizers 'student' and 'peer'"):
        build_run(build_setup(tiny_config("method=twice")))
    with pytest.raises(ValueError, match="peer has trainable parameters no optimizer steps"):
        build_run(build_setup(tiny_config("method=missing")))


def test_slots_and_steps_combine_by_name_or_refuse(tiny_config) -> None:
    a = Objective(slots={"ema": EMASlot(decay=0.9)})
    assert (a | Objective(slots={"ema": EMASlot(decay=0.9)})).slots == a.slots
    with pytest.raises(ValueError, match="slot 'ema' differently"):
        _ = a | Objective(slots={"ema": EMASlot(decay=0.99)})
    with pytest.raises(ValueError, match="'student' is the model being trained"):
        Objective(slots={"student": PeerSlot()})

    class Other(TwoPhases):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Other)

        def __hash__(self) -> int:
            return hash(Other)

    with pytest.raises(ValueError, match="replace the training step"):
        _ = Objective(step=TwoPhases()) | Objective(step=Other())
