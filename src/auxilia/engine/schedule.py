"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from auxilia.config import ScheduleConfig
from auxilia.train_config import epochs_to_steps


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Milestones and warm-up are given in epochs and converted to steps with ``steps_per_epoch``
    (:func:`~auxilia.train_config.epochs_to_steps`): a milestone applies from the first step
    at which its epochs were trained, and the warm-up ramps over whole steps up to exactly 1.
    """
    k = min(step, total_steps)
    if cfg.name == "constant":
        factor = 1.0
    elif cfg.name == "multistep":
        passed = sum(k >= epochs_to_steps(m, steps_per_epoch) for m in cfg.milestones)
        factor = cfg.gamma ** passed
    elif cfg.name == "cosine":
        cos = 0.5 * (1.0 + math.cos(math.pi * k / max(1, total_steps)))
        factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos
    elif cfg.name == "fixmatch_cosine":
        factor = math.cos(7.0 * math.pi * k / (16.0 * max(1, total_steps)))
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(f"unknown schedule {cfg.name!r}")
    warmup = epochs_to_steps(cfg.warmup_epochs, steps_per_epoch)
    if warmup > 0 and k < warmup:
        factor *= (k + 1) / warmup
    return factor


def beyond_the_run(cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> list[str]:
    """What of a schedule given in epochs a run of ``total_steps`` never reaches: milestones
    past its end, a warm-up longer than the run (a run whose length was derived, from
    ``train.time``, may be shorter than the schedule was written for)."""
    epochs = total_steps / steps_per_epoch
    notes = []
    late = [m for m in cfg.milestones if epochs_to_steps(m, steps_per_epoch) >= total_steps]
    if cfg.name == "multistep" and late:
        notes.append(f"schedule.milestones {', '.join(f'{m:g}' for m in late)} lie past the "
                     f"run's {epochs:.1f} epochs and never apply")
    if epochs_to_steps(cfg.warmup_epochs, steps_per_epoch) >= total_steps:
        notes.append(f"schedule.warmup_epochs={cfg.warmup_epochs:g} is longer than the run's "
                     f"{epochs:.1f} epochs: the learning rate never reaches its base value")
    return notes
