"""One conversion of a length in epochs into optimizer steps (``train_config.epochs_to_steps``),
shared by the run's length, ``train.eval_every`` and the schedule's milestones and warm-up."""

from __future__ import annotations

import pytest

from auxilia.config import ScheduleConfig
from auxilia.engine.schedule import lr_factor
from auxilia.train_config import TrainConfig, epochs_to_steps


@pytest.mark.parametrize(("epochs", "per_epoch", "steps"), [
    (2, 10, 20), (2.5, 5, 13), (0.5, 5, 3), (0.5, 7, 4), (1.5, 1, 2), (0, 10, 0),
    (0.1, 30, 3),  # 0.1 * 30 == 3.0000000000000004: binary noise adds no step
    (0.7, 10, 7),  # 0.7 * 10 == 7.000000000000001
])
def test_epochs_become_the_first_step_at_which_they_were_trained(epochs: float, per_epoch: int,
                                                                 steps: int) -> None:
    assert epochs_to_steps(epochs, per_epoch) == steps
    assert steps >= epochs * per_epoch - 1e-9  # never fewer epochs than asked for


def test_round_half_to_even_is_not_used() -> None:
    """Python's round() sends 2.5 to 2 and 3.5 to 4: half an epoch of 5 steps would land
    before the half epoch and of 7 steps after it; rounding up lands after it both times."""
    assert (round(0.5 * 5), round(0.5 * 7)) == (2, 4)  # what the old rounding gave
    assert (epochs_to_steps(0.5, 5), epochs_to_steps(0.5, 7)) == (3, 4)


def test_length_eval_every_and_milestones_agree_on_a_fractional_epoch() -> None:
    per_epoch = 5  # 0.5 epoch is 2.5 steps: every user of epochs must say 3
    train = TrainConfig(epochs=0.5, eval_every="0.5 epoch")
    assert train.total_steps(per_epoch) == 3
    assert train.eval_every_steps(per_epoch) == 3
    schedule = ScheduleConfig(name="multistep", milestones=[0.5], gamma=0.1)
    assert [lr_factor(k, 10, per_epoch, schedule) for k in range(5)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.1, 0.1])


def test_the_shortest_lengths_are_one_step() -> None:
    assert TrainConfig(epochs=0.001).total_steps(10) == 1
    assert TrainConfig(eval_every="0.01 epochs").eval_every_steps(10) == 1
    assert TrainConfig(steps=7, epochs=3).total_steps(10) == 7  # steps replace epochs


@pytest.mark.parametrize(("warmup_epochs", "per_epoch"), [(0.5, 3), (0.3, 7), (1.25, 2)])
def test_a_fractional_warmup_ramps_to_exactly_the_base_rate(warmup_epochs: float,
                                                             per_epoch: int) -> None:
    """The warm-up ramps over whole steps: never above the base rate (a warm-up of 1.5 steps
    once gave 2/1.5 = 1.33 at its second step), and at the base rate from its last step."""
    schedule = ScheduleConfig(name="constant", warmup_epochs=warmup_epochs)
    warmup = epochs_to_steps(warmup_epochs, per_epoch)
    factors = [lr_factor(k, 100, per_epoch, schedule) for k in range(warmup + 3)]
    assert max(factors) == pytest.approx(1.0)
    assert factors[:warmup] == pytest.approx([(k + 1) / warmup for k in range(warmup)])
    assert factors[warmup - 1:] == pytest.approx([1.0] * 4)
