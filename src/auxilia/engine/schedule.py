"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from auxilia.config import ScheduleConfig


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Milestones and warm-up are given in epochs and converted with ``steps_per_epoch``.
    """
    k = min(step, total_steps)
    if cfg.name == "constant":
        factor = 1.0
    elif cfg.name == "multistep":
        passed = sum(k >= round(m * steps_per_epoch) for m in cfg.milestones)
        factor = cfg.gamma ** passed
    elif cfg.name == "cosine":
        cos = 0.5 * (1.0 + math.cos(math.pi * k / max(1, total_steps)))
        factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos
    elif cfg.name == "fixmatch_cosine":
        factor = math.cos(7.0 * math.pi * k / (16.0 * max(1, total_steps)))
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(f"unknown schedule {cfg.name!r}")
    warmup = cfg.warmup_epochs * steps_per_epoch
    if warmup > 0 and k < warmup:
        factor *= (k + 1) / warmup
    return factor
