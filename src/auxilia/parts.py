"""What an objective declares besides its terms, heads and views: the engine's extension points.

* **Model slots** (:class:`FrozenSlot`, :class:`EMASlot`, :class:`PeerSlot`): the models a method
  reads besides the student, by name (the name a :class:`~auxilia.terms.Ref` gives as
  ``model``). Each slot says whether it is trained (its parameters are in an optimizer), whether
  it runs with gradient, and in which mode (``train``/``eval``); the engine builds and runs them
  generically and calls :meth:`Slot.after_step` once a step is committed.
* **Streams** (:class:`StreamSpec`): named index streams over a split, each with its own sampler
  and batch size, yielding the batch keys ``x_<keys>...``, ``y_<keys>``, ``idx_<keys>``.
* **Optimizers** (:class:`OptimizerSpec`): named optimizers over named slots (and the terms'
  own parameters), each with its own optimizer and schedule settings.
* **Step strategy** (:class:`StepStrategy`): what one training step does; the default is one
  forward per model, the objective, one backward and a step of every optimizer.

Everything here is a declaration: no tensors, no engine imports, so recipes can build them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from auxilia.terms.core import Objective

Mode = Literal["train", "eval"]
STUDENT = "student"
OBJECTIVE = "objective"  # the optimizer-spec name of the terms' own parameters


@dataclass(frozen=True)
class Progress:
    """Where training is: the optimizer step about to be taken and its share of the run."""

    step: int
    total_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> float:
        return self.step / max(1, self.steps_per_epoch)

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.total_steps)


class SlotContext(Protocol):
    """What the engine offers a slot while building it."""

    models: Mapping[str, nn.Module]  # the slots built so far, the student first

    def build_model(self, slot: str, architecture: str | None, weights: str | None = None
                    ) -> nn.Module:
        """A multi-exit model (the student's architecture when None), initialised from the
        slot's own seed, then loaded from ``weights`` (a run's checkpoint: backbone and main
        classifier; or a backbone state_dict) when given."""
        ...


class Slot:
    """A model besides the student. Subclasses set the three flags and implement ``build``.

    ``evaluated``: the slot is evaluated on val/test at every evaluation beside the deployed
    model (an EMA of the student), and can be the objective's ``deploy`` model.
    """

    trained: ClassVar[bool] = False
    grad: ClassVar[bool] = False
    mode: Mode = "eval"
    evaluated: bool = False

    def build(self, name: str, ctx: SlotContext) -> nn.Module:
        raise NotImplementedError

    def set_mode(self, model: nn.Module) -> None:
        """Put the slot's ``model`` in its training-time mode (the engine's one call, before
        training and after every evaluation)."""
        model.train(self.mode == "train")

    def after_step(self, name: str, models: Mapping[str, nn.Module], progress: Progress
                   ) -> None:
        """Called after every committed optimizer step (an EMA update goes here)."""

    @property
    def follows(self) -> str | None:
        """The slot whose optimizer step this one's :meth:`after_step` follows (an EMA's
        source): it runs only when that slot's optimizer stepped. None: any step."""
        return None

    @property
    def stateful(self) -> bool:
        """Whether the slot's weights change during training (and go into checkpoints)."""
        return self.trained


@dataclass(frozen=True)
class FrozenSlot(Slot):
    """A fixed network: a teacher from a checkpoint, or a copy of the student's initial weights.

    Args:
        weights: a run's checkpoint or a state_dict file; None copies the student as built.
        architecture: model name; None is the student's (only used with ``weights``).
        mode: ``eval`` (BatchNorm statistics fixed, no dropout), as a teacher should run.
    """

    weights: str | None = None
    architecture: str | None = None
    mode: Mode = "eval"

    def build(self, name: str, ctx: SlotContext) -> nn.Module:
        if self.weights is None:
            model = copy.deepcopy(ctx.models[STUDENT])
        else:
            model = ctx.build_model(name, self.architecture, self.weights)
        return model.requires_grad_(False)


@dataclass(frozen=True, eq=False)
class ModuleSlot(Slot):
    """A frozen network built before the objective (a teacher the recipes had to measure).

    Equal only to itself: two recipes that declare the same teacher share one slot.

    Args:
        model: the module, answering the multi-exit contract.
        source: where it came from, for logs and the run's summary.
    """

    model: nn.Module
    source: str = ""
    mode: Mode = "eval"

    def build(self, name: str, ctx: SlotContext) -> nn.Module:
        return self.model.requires_grad_(False)


DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
"""The layers an :class:`EMASlot` with ``dropout=False`` keeps in eval mode."""


@dataclass(frozen=True)
class EMASlot(Slot):
    """An exponential moving average of another slot (Mean Teacher, Tarvainen & Valpola 2017).

    After each committed step: ``θ_ema ← d·θ_ema + (1 − d)·θ`` with
    ``d = min(1 − 1/(t + 1), α)`` when ``warmup`` (t the number of steps taken), else ``α``;
    ``α`` is ``rampup_decay`` while ``t < rampup·total_steps`` (Mean Teacher's 0.99 during the
    consistency ramp-up) and ``decay`` after (0.999).

    **BatchNorm buffers are averaged like the weights** (``buffers="average"``, as timm's
    ``ModelEmaV2``): the EMA model's running mean/variance are the same moving average of the
    student's, so they match the averaged weights they normalise. Copying the student's
    statistics instead (``"copy"``, USB's and the FixMatch ports' choice) pairs lagging
    weights with current statistics: on digits with 10 labels per class, 1,000 steps, the
    copied-statistics EMA model tested 93.6 % (FixMatch) and 93.0 % (Mean Teacher) against
    98.9 % and 98.3 % averaged, its student 99.2 % and 98.1 %. ``num_batches_tracked`` is
    copied. Run in ``train`` mode (Mean Teacher), the EMA model normalises its training
    forwards with its batch's statistics; its running ones are the average either way.
    ``dropout=False`` keeps that train mode but switches its dropout layers (``nn.Dropout*``,
    :data:`DROPOUT_LAYERS`) to eval: a teacher without dropout noise whose BatchNorm still
    normalises with batch statistics (Mean Teacher's teacher-dropout ablation; stochastic depth
    is not dropout and is left as it is).

    Args:
        of: the slot averaged (``student`` by default).
        decay: the EMA decay α.
        warmup: Mean Teacher's decay warm-up ``min(1 − 1/(t + 1), α)``.
        rampup_decay: the decay while ``t < rampup·total_steps``; None: ``decay`` throughout.
        rampup: the share of training that uses ``rampup_decay``.
        mode: ``eval`` or ``train`` (Mean Teacher runs its teacher with dropout noise).
        evaluated: evaluated on val/test beside the deployed model at every evaluation.
        buffers: ``average`` or ``copy`` the floating buffers (BatchNorm statistics).
        dropout: in ``train`` mode, whether its dropout layers drop (False: they run as in
            eval); unused in ``eval`` mode, where they never do.
    """

    of: str = STUDENT
    decay: float = 0.999
    warmup: bool = True
    rampup_decay: float | None = None
    rampup: float = 0.0
    mode: Mode = "eval"
    evaluated: bool = True
    buffers: Literal["copy", "average"] = "average"
    dropout: bool = True

    def set_mode(self, model: nn.Module) -> None:
        super().set_mode(model)
        if not self.dropout:
            for module in model.modules():
                if isinstance(module, DROPOUT_LAYERS):
                    module.eval()

    @property
    def stateful(self) -> bool:
        return True

    @property
    def follows(self) -> str | None:
        return self.of

    def build(self, name: str, ctx: SlotContext) -> nn.Module:
        if self.of not in ctx.models:
            raise ValueError(f"slot {name!r} averages {self.of!r}, which is not a slot built "
                             f"before it; slots: {', '.join(ctx.models)}")
        return copy.deepcopy(ctx.models[self.of]).requires_grad_(False)

    def decay_at(self, steps_taken: int, total_steps: int = 0) -> float:
        """The decay of the update after ``steps_taken`` steps of ``total_steps``."""
        alpha = self.decay
        if self.rampup_decay is not None and steps_taken < self.rampup * total_steps:
            alpha = self.rampup_decay
        return min(1.0 - 1.0 / (steps_taken + 1), alpha) if self.warmup else alpha

    def after_step(self, name: str, models: Mapping[str, nn.Module], progress: Progress
                   ) -> None:
        ema_update(models[name], models[self.of],
                   self.decay_at(progress.step + 1, progress.total_steps), self.buffers)


@torch.no_grad()
def ema_update(ema: nn.Module, source: nn.Module, decay: float, buffers: str = "copy") -> None:
    """``ema ← decay·ema + (1 − decay)·source`` for parameters; floating buffers copied
    (``buffers="copy"``) or averaged the same way (``"average"``); integer ones copied."""
    ema_params = list(ema.parameters())
    src_params = list(source.parameters())
    if len(ema_params) != len(src_params):
        raise ValueError("the EMA model and its source have different parameters")
    torch._foreach_lerp_(ema_params, [p.detach() for p in src_params], 1.0 - decay)
    for b_ema, b_src in zip(ema.buffers(), source.buffers(), strict=True):
        if buffers == "average" and b_ema.is_floating_point():
            b_ema.lerp_(b_src, 1.0 - decay)
        else:
            b_ema.copy_(b_src)


@dataclass(frozen=True)
class PeerSlot(Slot):
    """A second network trained alongside the student (deep mutual learning, co-training).

    Args:
        architecture: model name; None is the student's. Initialised from its own seed.
        mode: ``train``.
    """

    architecture: str | None = None
    mode: Mode = "train"
    trained: ClassVar[bool] = True
    grad: ClassVar[bool] = True

    def build(self, name: str, ctx: SlotContext) -> nn.Module:
        return ctx.build_model(name, self.architecture)


@dataclass(frozen=True)
class StreamSpec:
    """A named stream of index batches over one split.

    Args:
        split: ``train`` (the labeled split), ``unlabeled``, or ``pseudo`` (unlabeled images
            a teacher labelled: ``data.pseudo_labels``, Noisy Student).
        keys: the batch-key suffix: views ``x_<keys>``, ``x_<keys>2``, ``x_<keys>_s`` ...,
            labels ``y_<keys>`` (labeled splits only) and indices ``idx_<keys>``.
        ratio: batch size as a multiple of ``data.batch_size`` (FixMatch's μ).
        batch_size: an absolute batch size instead of ``ratio``.
        yields: a default that gives way to the same stream of a method it is combined with
            (CDS's unlabeled stream at ratio 1 takes FixMatch's μ = 7).
    """

    split: Literal["train", "unlabeled", "pseudo"] = "train"
    keys: str = "lb"
    ratio: float = 1.0
    batch_size: int | None = None
    yields: bool = field(default=False, compare=False)

    def size(self, base_batch_size: int) -> int:
        return self.batch_size or max(1, round(self.ratio * base_batch_size))


LABELED = "labeled"
DEFAULT_STREAMS: dict[str, StreamSpec] = {LABELED: StreamSpec()}


def view_stream(key: str, streams: Mapping[str, StreamSpec]) -> str:
    """The stream a view key reads: the one whose ``x_<keys>`` is the longest prefix of it.

    Raises:
        ValueError: no stream yields the key.
    """
    matches = [(len(spec.keys), name) for name, spec in streams.items()
               if key.startswith(f"x_{spec.keys}")]
    if not matches:
        known = ", ".join(f"x_{s.keys}* ({n})" for n, s in streams.items())
        raise ValueError(f"view {key!r} belongs to no stream; streams yield {known}"
                         + ("; unlabeled views need a method that declares an unlabeled "
                            "stream" if key.startswith("x_ulb") else ""))
    return max(matches)[1]


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer over some slots' trainable parameters.

    Args:
        slots: slot names whose trainable parameters (heads included) it steps; ``objective``
            names the terms' own parameters. None: everything trainable no other optimizer
            claims.
        optim: overrides of ``optim`` for this optimizer (e.g. ``{"lr": 0.01}``).
        schedule: overrides of ``schedule`` for this optimizer.
    """

    slots: tuple[str, ...] | None = None
    optim: Mapping[str, Any] = field(default_factory=dict)
    schedule: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (self.slots, sorted(self.optim.items()), sorted(self.schedule.items()))


MAIN = "main"


@dataclass
class StepResult:
    """What a step strategy returns: the losses to log and the outputs.

    Whether each optimizer stepped is not the strategy's to say: the engine's stepper records
    it from the strategy's ``backward_step`` calls (one place), and commits state for what
    stepped.
    """

    losses: dict[str, torch.Tensor]
    outputs: Any


class StepTools(Protocol):
    """What the engine hands a step strategy."""

    objective: Objective
    models: Mapping[str, nn.Module]  # slot name → model, the student first

    def autocast(self) -> AbstractContextManager[None]:
        """Mixed precision as ``train.amp`` says (a no-op without it)."""
        ...

    def forward(self, wanted: Mapping[str, Sequence[str]], batch: Mapping[str, torch.Tensor]
                ) -> Any:
        """One forward per slot over the concatenated views (autocast, grad and modes as
        each slot says)."""
        ...

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[str] | None = None,
                      losses: Mapping[str, torch.Tensor] | None = None) -> bool:
        """Backward, clip, step ``optimizers`` (all by default) through the gradient scaler;
        False when the step was skipped."""
        ...


class StepStrategy(Protocol):
    """One training step: ``strategy(tools, batch, progress) -> StepResult``."""

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        ...


class OneBackward:
    """The default step: every slot's forward, the whole objective, one backward, every
    optimizer stepped."""

    def __call__(self, tools: StepTools, batch: Mapping[str, torch.Tensor],
                 progress: Progress) -> StepResult:
        with tools.autocast():
            outputs = tools.forward(tools.objective.inputs(), batch)
            losses = tools.objective(outputs, batch, progress)
        tools.backward_step(losses["loss"], losses=losses)
        return StepResult(losses, outputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OneBackward)

    def __hash__(self) -> int:
        return hash(OneBackward)
