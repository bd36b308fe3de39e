"""The backward half of a step, shared by every step strategy: non-finite checks, the fp16
gradient scaler, clipping and the optimizer steps.

A strategy (:class:`auxilia.parts.StepStrategy`) decides what to forward and which losses to
minimise with which optimizers; :func:`backward_step` is how each of its losses is applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from auxilia.engine.schedule import lr_factor

if TYPE_CHECKING:
    from auxilia.engine.context import RunContext


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; no checkpoint was written for that step."""


def set_learning_rates(run: RunContext, step: int) -> None:
    """Every optimizer's learning rate at ``step``: its own base rate and schedule."""
    for opt in run.optimizers.values():
        factor = lr_factor(step, run.total_steps, run.steps_per_epoch, opt.schedule)
        for group in opt.torch.param_groups:
            group["lr"] = opt.optim.lr * factor


def backward_step(run: RunContext, loss: torch.Tensor, names: Sequence[str] | None = None,
                  losses: Mapping[str, torch.Tensor] | None = None) -> bool:
    """Minimise ``loss`` with the optimizers ``names`` (all by default).

    A non-finite loss, or (without fp16 loss scaling) a non-finite gradient norm, is a
    non-finite step: it stops the run, or is skipped with ``train.on_nonfinite=skip``. With fp16
    loss scaling an inf/NaN gradient is an ordinary overflow: the scaler skips that step and
    lowers its scale (counted in ``scaler_skips``, never a failure); clipping then works on the
    unscaled gradients.

    Returns:
        Whether the optimizers stepped (False for a skipped step).
    """
    opts = [run.optimizers[n].torch for n in (names or run.optimizers)]
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        nonfinite(run, f"loss is {float(loss.detach())}", losses or {})
        return False
    scaler, clip = run.scaler, run.config.optim.grad_clip
    scaler.scale(loss).backward()
    params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
    if scaler.is_enabled():
        return _scaled_step(run, opts, params, clip)
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:  # only look: no rescaling pass over the gradients
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not torch.isfinite(norm):
        nonfinite(run, f"gradient norm is {float(norm)}", losses or {})
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return False
    for opt in opts:
        opt.step()
    return True


def _scaled_step(run: RunContext, opts: Sequence[torch.optim.Optimizer],
                 params: Sequence[torch.Tensor], clip: float | None) -> bool:
    scaler = run.scaler
    if clip is not None:
        for opt in opts:
            scaler.unscale_(opt)  # records inf/NaN gradients for scaler.step to skip
        torch.nn.utils.clip_grad_norm_(params, clip)
    scale = scaler.get_scale()
    for opt in opts:
        scaler.step(opt)
    scaler.update()
    if scaler.get_scale() < scale:  # the scaler found inf/NaN gradients and skipped
        run.loop.scaler_skips += 1
        return False
    return True


class BufferSnapshot:
    """The models' buffers before a step that may be skipped, to put back if it is.

    A forward in train mode updates BatchNorm's running statistics before the loss is known to
    be finite: without this, one NaN image in a skipped step would poison them for good. Taken
    only with ``train.on_nonfinite=skip`` (otherwise a non-finite step stops the run); the
    buffers are per-channel vectors, so the copy costs little.
    """

    def __init__(self, run: RunContext) -> None:
        self.buffers = ([b for m in run.models.values() for b in m.buffers()]
                        if run.config.train.on_nonfinite == "skip" else [])
        self.saved = [b.clone() for b in self.buffers]

    def restore(self) -> None:
        for buffer, saved in zip(self.buffers, self.saved, strict=True):
            buffer.copy_(saved)


def nonfinite(run: RunContext, what: str, losses: Mapping[str, torch.Tensor]) -> None:
    """Count a skipped step (``train.on_nonfinite=skip``) or stop the run naming it."""
    cfg, loop = run.config, run.loop
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items() if k != "loss")
    if cfg.train.on_nonfinite == "skip":
        loop.skipped_steps += 1
        return
    folder = run.folder
    last = folder.last if folder is not None and folder.last.is_file() else "none yet"
    raise NonFiniteLossError(
        f"{what} at step {loop.step + 1} (terms: {terms}); stopped without writing a "
        f"checkpoint. Last good checkpoint: {last}. Try a lower optim.lr, optim.grad_clip, "
        "or train.on_nonfinite=skip")
