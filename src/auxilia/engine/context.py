"""What a run is made of, in one object: the built setup, the model slots, the batches (its
streams), the optimizers, the gradient scaler and the loop's counters, plus its typed I/O
(:class:`~auxilia.engine.runio.RunIO`: folder, log, progress).

State only: what a step does with it is the stepper's (:mod:`auxilia.engine.stepper`).
:func:`build_run` turns an objective's declarations (:mod:`auxilia.parts`) into these pieces;
the loop, the stepper and the checkpoint read them by name and know no method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auxilia.config import Config, OptimConfig, ScheduleConfig
from auxilia.data.streams import IndexStream
from auxilia.engine.batches import Batches
from auxilia.engine.optim import build_optimizer_over
from auxilia.engine.runio import RunIO
from auxilia.engine.setup import Setup
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.models.weights import load_run_classifier
from auxilia.parts import MAIN, OBJECTIVE, STUDENT, OptimizerSpec, Slot
from auxilia.seeding import derive_seed, seeded
from auxilia.terms import Objective


@dataclass
class LoopState:
    """Counters that travel with the checkpoint."""

    step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    skipped_steps: int = 0
    train_seconds: float = 0.0
    images: int = 0
    scaler_skips: int = 0  # fp16 overflows the gradient scaler skipped (not failures)
    wall_seconds: float = 0.0  # the loop's wall time: steps, evaluations, checkpoints
    derived_steps: int | None = None  # the total a train.time run derived (timebudget.py)
    time_budget: dict[str, Any] | None = None  # what it measured (TimeBudget.to_dict)


@dataclass
class Optimizer:
    """A named optimizer with its own settings and schedule."""

    torch: torch.optim.Optimizer
    optim: OptimConfig
    schedule: ScheduleConfig
    slots: tuple[str, ...]


@dataclass
class RunContext:
    """Everything a run is made of; the loop and the stepper take this and nothing else."""

    setup: Setup
    models: dict[str, nn.Module]
    slots: dict[str, Slot]
    batches: Batches
    optimizers: dict[str, Optimizer]
    scaler: torch.amp.GradScaler
    loop: LoopState = field(default_factory=LoopState)
    io: RunIO = field(default_factory=RunIO)

    @property
    def config(self) -> Config:
        return self.setup.config

    @property
    def objective(self) -> Objective:
        return self.setup.objective

    @property
    def student(self) -> MultiExitModel:
        return self.setup.model

    @property
    def streams(self) -> dict[str, IndexStream]:
        return self.batches.streams

    @property
    def labeled(self) -> IndexStream:
        return self.batches.labeled

    @property
    def steps_per_epoch(self) -> int:
        """An epoch is one pass over the labeled split."""
        return self.batches.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """``train.steps``, ``train.epochs`` of batches, or the total derived for
        ``train.time`` (:meth:`auxilia.train_config.TrainConfig.total_steps`)."""
        return self.config.train.total_steps(self.steps_per_epoch, self.loop.derived_steps)

    def set_modes(self) -> None:
        """Student in train mode, every other slot in the mode it asks for."""
        self.student.train()
        for name, slot in self.slots.items():
            slot.set_mode(self.models[name])


class _SlotBuilder:
    """The :class:`~auxilia.parts.SlotContext` the engine offers slots while they are built."""

    def __init__(self, setup: Setup, models: dict[str, nn.Module]) -> None:
        self.setup, self.models = setup, models

    def build_model(self, slot: str, architecture: str | None, weights: str | None = None
                    ) -> nn.Module:
        cfg, data = self.setup.config, self.setup.data
        channels, height, _ = data.image_shape
        seed = derive_seed(cfg.seed, "slot", slot)
        with seeded(derive_seed(seed, "backbone")):
            options = cfg.model.backbone_options() if architecture is None else {}
            backbone = create_backbone(architecture or cfg.model.name, in_chans=channels,
                                       image_size=height, weights=weights, **options)
        model = MultiExitModel(backbone, data.num_classes, drop_rate=cfg.model.drop_rate,
                               init_seed=seed)
        if weights is not None:
            load_run_classifier(model.classifier, weights)
        return model


def build_run(setup: Setup) -> RunContext:
    """Build the objective's slots (with their heads), streams, optimizers and scaler."""
    models: dict[str, nn.Module] = {STUDENT: setup.model}
    builder = _SlotBuilder(setup, models)
    for name, slot in setup.objective.slots.items():
        model = slot.build(name, builder)
        for spec in setup.objective.heads_of(name):
            model.attach(spec)  # type: ignore[operator]
        if setup.config.model.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        models[name] = model.to(setup.device)
    _check_refs(setup.objective, models)
    batches = Batches.build(setup)
    optimizers = build_optimizers(setup, models)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=fp16_scaling(setup))
    return RunContext(setup, models, dict(setup.objective.slots), batches, optimizers, scaler)


def _check_refs(objective: Objective, models: Mapping[str, nn.Module]) -> None:
    unknown = sorted(set(objective.inputs()) - set(models))
    if unknown:
        raise ValueError(f"the objective reads model(s) {', '.join(unknown)}, which no slot "
                         f"declares; slots: {', '.join(models)}")
    for spec in objective.heads.values():
        if spec.model not in models:
            raise ValueError(f"a head on exit {spec.exit!r} attaches to slot {spec.model!r}, "
                             f"which is not declared; slots: {', '.join(models)}")


def fp16_scaling(setup: Setup) -> bool:
    """Loss scaling is on for fp16 autocast (bf16 has fp32's range and needs none)."""
    t = setup.config.train
    return t.amp and t.amp_dtype == "float16" and setup.device.type in ("cuda", "cpu")


def build_optimizers(setup: Setup, models: Mapping[str, nn.Module]) -> dict[str, Optimizer]:
    """The objective's optimizers (one ``main`` over everything trainable by default).

    Every trainable parameter belongs to exactly one optimizer: a parameter claimed twice, or
    a trainable slot that no optimizer steps, is refused naming it.
    """
    cfg = setup.config
    specs = dict(setup.objective.optimizers) or {MAIN: OptimizerSpec()}
    owners = {**{n: m for n, m in models.items() if _trained(setup, n)},
              OBJECTIVE: setup.objective}
    claimed = {s for spec in specs.values() for s in (spec.slots or ())}
    optimizers = {}
    for name, spec in specs.items():
        names = spec.slots if spec.slots is not None else tuple(o for o in owners
                                                              if o not in claimed)
        unknown = [n for n in names if n not in owners]
        if unknown:
            raise ValueError(f"optimizer {name!r} steps {unknown}, not trainable slots; "
                             f"trainable: {', '.join(owners)}")
        optim = cfg.optim.model_copy(update=dict(spec.optim))
        schedule = cfg.schedule.model_copy(update=dict(spec.schedule))
        modules = [owners[n] for n in names]
        optimizers[name] = Optimizer(build_optimizer_over(modules, optim), optim, schedule,
                                     tuple(names))
    _check_ownership(optimizers, owners)
    return optimizers


def _trained(setup: Setup, name: str) -> bool:
    return name == STUDENT or setup.objective.slots[name].trained


def _check_ownership(optimizers: Mapping[str, Optimizer], owners: Mapping[str, nn.Module]
                     ) -> None:
    seen: dict[int, str] = {}
    for name, opt in optimizers.items():
        for group in opt.torch.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(f"a parameter is in optimizers {seen[id(p)]!r} and "
                                     f"{name!r}; give each slot to one optimizer")
                seen[id(p)] = name
    for owner, module in owners.items():
        missing = [n for n, p in module.named_parameters()
                   if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(f"{owner} has trainable parameters no optimizer steps (e.g. "
                             f"{missing[0]}); name it in one OptimizerSpec.slots")
