"""One training step, in one place: autocast, the forwards, the backward through the gradient
scaler, clipping, the optimizer steps, the non-finite policy, the buffer snapshot and the
hooks of a committed step.

A step strategy (:class:`auxilia.parts.StepStrategy`) decides what to forward and which losses
to minimise with which optimizers; the :class:`Stepper` is the toolbox it is handed
(:class:`auxilia.parts.StepTools`) and records, per optimizer, whether it stepped. State is
then committed only for what stepped: an EMA model follows its source's optimizer, a term's
bank the optimizers of the models it reads, and a model whose optimizer did not step gets its
BatchNorm buffers back.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auxilia.engine.context import RunContext
from auxilia.engine.distributed import average_gradients, sync_batchnorm, wrap_for_backward
from auxilia.engine.evaluate import autocast
from auxilia.engine.schedule import lr_factor
from auxilia.parts import OBJECTIVE, Progress
from auxilia.ranks import all_true
from auxilia.terms import Objective

Outputs = dict[tuple[str, str], Any]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; no checkpoint was written for that step."""


@dataclass
class StepOutcome:
    """What one step did: its losses and outputs, and whether each optimizer stepped.

    ``stepped`` holds every optimizer a ``backward_step`` of the step named (True: stepped;
    False: skipped, for a non-finite loss or gradient, or an fp16 overflow). ``nonfinite``
    says why a non-finite part was skipped (``train.on_nonfinite=skip``); ``overflow`` is an
    fp16 overflow the gradient scaler skipped (never a failure).
    """

    losses: dict[str, torch.Tensor]
    outputs: Any
    stepped: dict[str, bool] = field(default_factory=dict)
    nonfinite: str | None = None
    overflow: bool = False

    @property
    def committed(self) -> bool:
        """Every optimizer the step named stepped."""
        return bool(self.stepped) and all(self.stepped.values())


def set_learning_rates(run: RunContext, step: int) -> None:
    """Every optimizer's learning rate at ``step``: its own base rate and schedule."""
    for opt in run.optimizers.values():
        factor = lr_factor(step, run.total_steps, run.steps_per_epoch, opt.schedule)
        for group in opt.torch.param_groups:
            group["lr"] = opt.optim.lr * factor


class Stepper:
    """Runs a run's steps: the :class:`~auxilia.parts.StepTools` its step strategy uses.

    Args:
        run: the run whose models, optimizers and scaler it steps.
    """

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.ranks = run.batches.ranks
        self.no_grad = {name for name, slot in run.slots.items() if not slot.grad}
        self.owner = {slot: name for name, opt in run.optimizers.items() for slot in opt.slots}
        # with several ranks the trained models run wrapped in DDP (gradients averaged in
        # the backward); run.models stay unwrapped for checkpoints and evaluation
        if run.config.model.sync_bn:
            sync_batchnorm(run.models, set(self.owner), self.ranks)
        self.forwarded = wrap_for_backward(run.models, set(self.owner), self.ranks)
        # train.on_nonfinite=stop without fp16 loss scaling: the step never waits for the
        # device; the first non-finite step is kept on the device and read by check()
        self.deferred = (run.config.train.on_nonfinite == "stop"
                         and not run.scaler.is_enabled())
        # (step, "loss" or "gradient norm", its value on the device), read by check()
        self.window: list[tuple[int, str, torch.Tensor]] = []
        self.outside_ddp = ([p for p in run.objective.parameters() if p.requires_grad]
                            if OBJECTIVE in self.owner else [])
        self._stepped: dict[str, bool] = {}
        self._nonfinite: str | None = None
        self._overflow = False
        self._scaled = False

    # -- the tools a step strategy uses (auxilia.parts.StepTools) ------------------------------

    @property
    def objective(self) -> Objective:
        return self.run.objective

    @property
    def models(self) -> Mapping[str, nn.Module]:
        return self.run.models

    def autocast(self) -> AbstractContextManager[None]:
        """Mixed precision as ``train.amp`` says (a no-op without it)."""
        setup = self.run.setup
        return autocast(setup.device, setup.config.train.amp, setup.amp_dtype)

    def forward(self, wanted: Mapping[str, Sequence[str]], batch: Mapping[str, torch.Tensor]
                ) -> Outputs:
        """One forward per slot over the concatenation of its views (:func:`forward_all`)."""
        return forward_all(self.forwarded, wanted, batch, no_grad=self.no_grad)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[str] | None = None,
                      losses: Mapping[str, torch.Tensor] | None = None) -> bool:
        """Minimise ``loss`` with the optimizers ``optimizers`` (all by default).

        A non-finite loss, or (without fp16 loss scaling) a non-finite gradient norm, is a
        non-finite step: it stops the run, or is skipped with ``train.on_nonfinite=skip``. With
        fp16 loss scaling an inf/NaN gradient is an ordinary overflow: the scaler skips those
        optimizers and lowers its scale once, at the end of the step (counted in
        ``scaler_skips``, never a failure); clipping then works on the unscaled gradients.

        The backward always runs (with several processes every rank's gradient reduction must
        take place), then the loss's and the gradients' finiteness are decided together, once,
        for every rank (:meth:`agree`): one host sync.

        Returns:
            Whether the optimizers stepped (False for a skipped step).
        """
        names = list(optimizers or self.run.optimizers)
        opts = [self.run.optimizers[n].torch for n in names]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        scaler = self.run.scaler
        scaler.scale(loss).backward()
        average_gradients(self.outside_ddp, self.ranks)  # DDP averaged the models' own
        if self.deferred:
            return self._step_deferred(names, opts, loss)
        norm = self._gradient_norm(opts)
        loss_ok, grad_ok = self.agree(torch.stack([torch.isfinite(loss.detach()),
                                                   torch.isfinite(norm)]))
        if scaler.is_enabled():
            self._scaled = True  # unscaled above: the scaler updates at the end of the step
            if loss_ok:
                for opt in opts:
                    scaler.step(opt)  # skips an optimizer whose gradients overflowed
                self._overflow |= not grad_ok
        elif loss_ok and grad_ok:
            for opt in opts:
                opt.step()
        stepped = loss_ok and grad_ok
        if not stepped:
            for opt in opts:
                opt.zero_grad(set_to_none=True)
        if not loss_ok:
            here = float(loss.detach())
            self._skip(names, f"loss is {here}" if not math.isfinite(here)
                       else "the loss is not finite on another rank", losses)
        elif not grad_ok and not scaler.is_enabled():
            self._skip(names, f"gradient norm is {float(norm)}", losses)
        self._stepped.update(dict.fromkeys(names, stepped))
        return stepped

    def _step_deferred(self, names: Sequence[str], opts: Sequence[torch.optim.Optimizer],
                       loss: torch.Tensor) -> bool:
        """Step without reading the device (``on_nonfinite=stop``): the loss (and the clipped
        gradients' norm, when ``optim.grad_clip`` computes it anyway) is kept for the next
        :meth:`check`, which stops the run before any log line, evaluation or checkpoint
        could use what a non-finite step touched. No pass over the gradients is added: a
        non-finite gradient with a finite loss makes the weights, so the next loss,
        non-finite (and the weights are checked before every checkpoint)."""
        step = self.run.loop.step
        self.window.append((step, "loss", loss.detach()))
        if self.run.config.optim.grad_clip is not None:
            self.window.append((step, "gradient norm", self._gradient_norm(opts)))
        for opt in opts:
            opt.step()
        self._stepped.update(dict.fromkeys(names, True))
        return True

    def check(self) -> None:
        """Stop the run if a deferred step was non-finite (on any rank): one host read, made
        at the logging interval, before every evaluation and checkpoint, and at the end.

        Raises:
            NonFiniteLossError: naming the first non-finite step and the last good checkpoint.
        """
        window, self.window = self.window, []
        if not self.deferred:
            return
        values = (torch.stack([v.float() for _, _, v in window]) if window
                  else torch.zeros(1, device=self.run.setup.device))
        (finite,) = self.agree(torch.isfinite(values).all().reshape(1))
        if finite:
            return
        found = f"found at step {self.run.loop.step}"
        bad = [(step, kind, value) for (step, kind, _), value
               in zip(window, values.tolist(), strict=True) if not math.isfinite(value)]
        what = (f"{bad[0][1]} is {bad[0][2]} at step {bad[0][0] + 1}" if bad
                else "the loss or the gradients became non-finite on another rank")
        raise NonFiniteLossError(f"{what} ({found}); stopped without writing a checkpoint. "
                                 f"{self._last_good()}")

    def agree(self, flags: torch.Tensor) -> tuple[bool, ...]:
        """Boolean flags every process decides alike: each is true only where it is true on
        every rank (one process: as given). The step's one host sync."""
        return tuple(bool(f) for f in all_true(flags).tolist())

    def _gradient_norm(self, opts: Sequence[torch.optim.Optimizer]) -> torch.Tensor:
        """The gradients' total norm, clipped to ``optim.grad_clip`` when set (unscaled first
        under fp16 loss scaling, which also records an overflow for ``scaler.step``)."""
        scaler, clip = self.run.scaler, self.run.config.optim.grad_clip
        if scaler.is_enabled():
            for opt in opts:
                scaler.unscale_(opt)
        params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])

    def _skip(self, names: Sequence[str], what: str,
              losses: Mapping[str, torch.Tensor] | None) -> None:
        """A non-finite part of the step: skipped (``train.on_nonfinite=skip``) or the run
        stopped, naming it."""
        run = self.run
        if run.config.train.on_nonfinite == "skip":
            self._nonfinite = self._nonfinite or what
            return
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in (losses or {}).items()
                          if k != "loss")
        raise NonFiniteLossError(
            f"{what} at step {run.loop.step + 1} (terms: {terms}); stopped without writing a "
            f"checkpoint. {self._last_good()}")

    def _last_good(self) -> str:
        folder = self.run.io.folder
        last = folder.last if folder is not None and folder.last.is_file() else "none yet"
        return (f"Last good checkpoint: {last}. Try a lower optim.lr, optim.grad_clip, or "
                "train.on_nonfinite=skip")

    # -- the step ------------------------------------------------------------------------------

    def step(self, batch: Mapping[str, torch.Tensor], progress: Progress) -> StepOutcome:
        """The objective's step strategy on ``batch``, then the state of what stepped.

        The gradient scaler updates once per step, however many backward calls it made.
        """
        run = self.run
        self._stepped, self._nonfinite, self._overflow, self._scaled = {}, None, False, False
        buffers = BufferSnapshot(run)
        result = run.objective.step(self, batch, progress)
        if self._scaled:
            run.scaler.update()
        outcome = StepOutcome(result.losses, result.outputs, dict(self._stepped),
                              self._nonfinite, self._overflow)
        committed = self.committed_models(outcome.stepped)
        if outcome.nonfinite is not None:  # a skipped part leaves no trace in the buffers
            buffers.restore(set(run.models) - committed)
        run.loop.skipped_steps += outcome.nonfinite is not None
        run.loop.scaler_skips += outcome.overflow
        if committed:
            run.objective.after_step(outcome.outputs, batch, progress, committed)
            for name, slot in run.slots.items():
                if name in committed:
                    slot.after_step(name, run.models, progress)
        return outcome

    def committed_models(self, stepped: Mapping[str, bool]) -> set[str]:
        """The models whose state this step commits: those of an optimizer that stepped, a
        slot that follows one of them (an EMA of a stepped model), and models that no
        optimizer steps and follow none, once any optimizer stepped."""
        run = self.run
        if not any(stepped.values()):
            return set()
        done = {slot for name, ok in stepped.items() if ok
                for slot in run.optimizers[name].slots}
        for name in run.models:
            if name in done or name in self.owner:
                continue
            slot = run.slots.get(name)
            source = slot.follows if slot is not None else None
            if source is None or source in done:
                done.add(name)
        return done


class BufferSnapshot:
    """The models' buffers before a step that may be skipped, to put back if it is.

    A forward in train mode updates BatchNorm's running statistics before the loss is known to
    be finite: without this, one NaN image in a skipped step would poison them for good. Taken
    only with ``train.on_nonfinite=skip`` (otherwise a non-finite step stops the run); the
    buffers are per-channel vectors, so the copy costs little.
    """

    def __init__(self, run: RunContext) -> None:
        keep = run.config.train.on_nonfinite == "skip"
        self.saved = {name: [(b, b.clone()) for b in model.buffers()]
                      for name, model in run.models.items()} if keep else {}

    def restore(self, models: Collection[str] | None = None) -> None:
        """Put back the buffers of ``models`` (all by default)."""
        for name, pairs in self.saved.items():
            if models is None or name in models:
                for buffer, saved in pairs:
                    buffer.copy_(saved)


def forward_all(models: Mapping[str, nn.Module], wanted: Mapping[str, Sequence[str]],
                batch: Mapping[str, torch.Tensor], no_grad: Collection[str] = ()) -> Outputs:
    """One forward per model over the concatenation of its views, split back per view.

    Args:
        models: slot name → model.
        wanted: slot name → the views it runs on.
        batch: the step's batch.
        no_grad: slots that run without autograd (frozen and EMA teachers).

    Returns:
        ``outputs[(model, view)][exit][field]``.
    """
    outputs: Outputs = {}
    for name, views in wanted.items():
        sizes = [batch[v].shape[0] for v in views]
        x = batch[views[0]] if len(views) == 1 else torch.cat([batch[v] for v in views])
        with torch.no_grad() if name in no_grad else nullcontext():
            out = models[name](x)
        for i, view in enumerate(views):
            outputs[(name, view)] = {
                exit_name: {k: (t if len(views) == 1 else t.split(sizes)[i]) for k, t in f.items()}
                for exit_name, f in out.items()}
    return outputs


__all__ = ["BufferSnapshot", "NonFiniteLossError", "StepOutcome", "Stepper",
           "forward_all", "set_learning_rates"]
