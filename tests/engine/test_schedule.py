from __future__ import annotations

import math

import pytest

from auxilia.config import ScheduleConfig
from auxilia.engine.schedule import lr_factor


def test_cosine_goes_from_one_to_min_ratio() -> None:
    cfg = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 100, 10, cfg) == pytest.approx(0.55)
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.1)


def test_fixmatch_cosine_is_cos_7pi_16() -> None:
    cfg = ScheduleConfig(name="fixmatch_cosine")
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(math.cos(7 * math.pi / 16))
    assert lr_factor(30, 100, 10, cfg) == pytest.approx(math.cos(7 * math.pi * 30 / 1600))


def test_multistep_milestones_are_in_epochs() -> None:
    cfg = ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1)
    assert lr_factor(19, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(20, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(45, 100, 10, cfg) == pytest.approx(0.01)


def test_warmup_is_linear_then_hands_over() -> None:
    cfg = ScheduleConfig(name="constant", warmup_epochs=1)
    assert [lr_factor(k, 100, 10, cfg) for k in (0, 4, 9, 10)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0])
