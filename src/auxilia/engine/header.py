"""What a run prints before its first step: data, splits, model, method and budget.

One function, :func:`run_header`, writes these lines for every command that trains (``train``,
``compare``, ``rounds``, the Python API): a single run prints them, a sweep shows them once for
each distinct header (:class:`HeaderDedup`). ``eval`` and ``export`` print the same data and
model lines (:func:`data_lines`, :func:`model_line`) for the run they load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from auxilia.data.sources import describe_splits
from auxilia.engine.context import RunContext
from auxilia.engine.selection import eval_every
from auxilia.engine.setup import Setup
from auxilia.method_defaults import applied_method_defaults
from auxilia.models.scaled import scale_note

__all__ = ["Header", "HeaderDedup", "data_lines", "model_line", "run_header"]

Header = Callable[[list[str]], None]
"""Receives a run's header lines (see :func:`run_header`) instead of their being printed."""


def run_header(run: RunContext, notes: Sequence[str] = (), teacher: str | None = None
               ) -> list[str]:
    """The lines a run shows before training.

    Args:
        run: the built run.
        notes: what was decided for the user (the ``auto`` choice, data hygiene, ...), each
            printed as ``note: ...``.
        teacher: the teacher's description line, when the run has one.

    Returns:
        ``data: ...``, one line per split, ``model: ...``, ``train: ...``, the methods' own
        defaults that were applied, the teacher's line and the notes.
    """
    lines = data_lines(run.setup)
    lines.append(model_line(run.setup))
    lines.append(_budget_line(run))
    lines += applied_method_defaults(run.config)  # FixMatch's own optimizer, ...
    if teacher:
        lines.append(teacher)
    lines += [f"note: {note}" for note in notes]
    return lines


def data_lines(setup: Setup) -> list[str]:
    """``data: SOURCE, N classes, images CxHxW`` and one indented line per split."""
    data = setup.data
    lines = [f"data: {setup.config.data.source}, {data.num_classes} classes, images "
             f"{'x'.join(map(str, data.image_shape))}"]
    return lines + [f"  {line}" for line in describe_splits(data)]


def model_line(setup: Setup) -> str:
    """``model: NAME at SxS, P parameters [deployed (T in training)]; method M``."""
    config, model = setup.config, setup.model
    side = setup.data.image_shape[-1]
    deployed = sum(p.numel() for p in model.strip().parameters())
    total = sum(p.numel() for p in model.parameters())
    pretrained = " (pretrained)" if config.model.pretrained else ""
    methods = " + ".join(m.name for m in config.method)
    return (f"model: {config.model.name}{pretrained} at {side}x{side}, {deployed:,} parameters"
            + (f" deployed ({total:,} in training)" if total != deployed else "")
            + f"; method {methods}" + scale_note(config.model.scale, model.backbone, side))


def _budget_line(run: RunContext) -> str:
    config, loop = run.config, run.loop
    per_epoch, optim = run.steps_per_epoch, config.optim
    if config.train.time is not None and loop.derived_steps is None:  # derived once it starts
        length = f"train.time={config.train.time} (steps derived from the measured speed)"
    else:
        total = run.total_steps
        length = (f"{total:,} steps ({total / per_epoch:.3g} epochs of {per_epoch:,} "
                  f"step{'s' if per_epoch > 1 else ''})")
    return (f"train: {length} at "
            f"batch {config.data.batch_size}, {optim.name} lr {optim.lr:g}, schedule "
            f"{config.schedule.name}, evaluating every {eval_every(run):,}"
            " steps" + (f"; resuming at step {loop.step:,}" if loop.step else ""))


class HeaderDedup:
    """Shows a header only when no run shown before had the same one (a sweep's seeds of one
    variant share theirs), prefixed by the run it belongs to."""

    def __init__(self, show: Callable[[str], Any]) -> None:
        self.show = show
        self._seen: set[tuple[str, ...]] = set()

    def __call__(self, key: str, lines: list[str]) -> None:
        if tuple(lines) in self._seen:
            return
        self._seen.add(tuple(lines))
        self.show(f"{key}:")
        for line in lines:
            self.show(f"  {line}")
