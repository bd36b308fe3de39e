"""``train.time``: durations, the arithmetic of the derived total, and real runs on digits
(wall time near the budget, schedule fitted to the derived total, exact resume)."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from auxilia.config import ConfigError, ScheduleConfig, load_config
from auxilia.durations import format_duration, parse_duration
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.schedule import beyond_the_run, lr_factor
from auxilia.engine.timebudget import (
    TimeBudget,
    TimeBudgetError,
    evaluations,
    seconds_for_steps,
    steps_for_time,
)

BUDGET = 8.0  # seconds: enough that a loaded machine still fits a few steps of digits


@pytest.mark.parametrize(("given", "seconds", "canonical"), [
    ("15m", 900.0, "15m"), ("90s", 90.0, "1m30s"), ("1h30m", 5400.0, "1h30m"),
    ("2.5m", 150.0, "2m30s"), (600, 600.0, "10m"), ("600", 600.0, "10m"), (7.5, 7.5, "7.5s"),
    ("1 min 30 sec", 90.0, "1m30s"), (".5h", 1800.0, "30m"), ("1h1m1.25s", 3661.25, "1h1m1.25s")])
def test_durations_parse_and_have_one_spelling(given: object, seconds: float,
                                               canonical: str) -> None:
    assert parse_duration(given) == seconds
    assert format_duration(seconds) == canonical
    assert parse_duration(canonical) == seconds


@pytest.mark.parametrize("bad", ["0", 0, -5, "-1m", "inf", "nan", float("inf"), "abc", "30m1h",
                                 "1h1h", "m", "", "10mm", "5 x", True, [1]])
def test_a_bad_train_time_is_one_line_naming_the_key_and_the_forms(bad: object) -> None:
    assert parse_duration(bad) is None
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.time={json.dumps(bad)}"])
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith("train.time: expected a duration")
    assert "15m, 90s, 1h30m, 2.5m" in lines[0]


def test_time_replaces_epochs_and_refuses_steps() -> None:
    config = load_config(None, ["train.time=90s", "train.epochs=5"])
    assert (config.train.time, config.train.time_seconds) == ("1m30s", 90.0)
    assert config.train.total_steps(10, derived=42) == 42  # epochs play no part
    with pytest.raises(ValueError, match="none was derived yet"):
        config.train.total_steps(10)
    with pytest.raises(ConfigError, match=r"train.time=2m and train.steps=50 both set"):
        load_config(None, ["train.time=2m", "train.steps=50"])
    assert load_config(None, ["train.time=2m", "train.epochs=null"]).train.time == "2m"


def test_steps_for_time_exact_numbers() -> None:
    costs = {"step_s": 0.5, "eval_s": 2.0, "eval_every": 10, "spent_s": 5.0}
    # 5 + 0.5·134 + 2·14 = 100 fits exactly; 135 steps cost 100.5
    assert steps_for_time(100.0, **costs) == 134
    assert seconds_for_steps(134, **costs) == 100.0
    assert seconds_for_steps(135, **costs) == 100.5
    assert seconds_for_steps(0, **costs) == 5.0
    # evaluating every step: 5 + 2.5·n ≤ 100 → 38
    assert steps_for_time(100.0, **{**costs, "eval_every": 1}) == 38
    assert steps_for_time(7.0, **costs) == 0  # one step and its evaluation cost 7.5
    assert steps_for_time(7.5, **costs) == 1
    assert [evaluations(n, 10) for n in (0, 1, 10, 11, 25)] == [0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="step_s"):
        steps_for_time(10.0, step_s=0.0, eval_s=1.0, eval_every=1)


def test_a_budget_without_room_for_one_step_is_refused_naming_what_one_epoch_needs() -> None:
    with pytest.raises(TimeBudgetError) as err:
        TimeBudget.decide("5s", 5.0, step_s=0.5, eval_s=3.0, spent_s=4.0,
                          measured_steps=20, eval_every=10, steps_per_epoch=10)
    # one epoch: 4 + 10·0.5 + 3 = 12 s
    assert str(err.value) == ("train.time=5s leaves no time to train: measuring took 4.0 s, one "
                              "step takes 0.5 s and one evaluation 3 s; one epoch (10 steps) "
                              "needs about train.time=12s")
    budget = TimeBudget.decide("1m", 60.0, step_s=0.5, eval_s=2.0, spent_s=4.0,
                               measured_steps=20, eval_every=10, steps_per_epoch=10)
    assert (budget.steps, budget.planned_s) == (80, 4 + 40 + 8 * 2)  # 81 would cost 62.5
    assert budget.line(10) == ("train.time=1m: 0.5 s per step, 2 s per evaluation (measured on "
                               "20 steps, 4.0 s) -> 80 steps (8.0 epochs), evaluations every 10 "
                               "steps, about 1m")


def test_what_a_derived_total_never_reaches_of_a_schedule_is_said() -> None:
    multistep = ScheduleConfig(name="multistep", milestones=[2, 20], warmup_epochs=30)
    notes = beyond_the_run(multistep, total_steps=114, steps_per_epoch=10)
    assert notes == ["schedule.milestones 20 lie past the run's 11.4 epochs and never apply",
                     "schedule.warmup_epochs=30 is longer than the run's 11.4 epochs: the "
                     "learning rate never reaches its base value"]
    assert beyond_the_run(ScheduleConfig(name="cosine"), 114, 10) == []


@pytest.fixture
def one_thread():
    """One torch thread while a run is timed: on a shared CPU two threads wait for each other
    behind other processes, and a step's time jitters two- or threefold from one step to the
    next; the budget is about the run's own speed, not the neighbours'."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_time_budget_run_derives_records_and_keeps_to_its_time(tiny_config, capsys,
                                                                  one_thread) -> None:
    config = tiny_config(f"train.time={BUDGET:g}s", "run.progress=plain",
                         "schedule.min_lr_ratio=0.1")
    started = time.perf_counter()
    result = train(config)
    outside = time.perf_counter() - started
    summary, budget = result.summary, result.summary["time_budget"]
    steps = summary["steps"]
    assert budget["steps"] == steps >= 1 and budget["time"] == f"{BUDGET:g}s"
    assert budget["planned_s"] <= BUDGET and budget["measured_steps"] >= 5
    # the machine is shared: the 10 % target is measured in the docs, a loose bound here
    assert 0.5 * BUDGET <= summary["wall_seconds"] <= 1.5 * BUDGET, budget
    assert summary["wall_seconds"] <= outside
    out = capsys.readouterr().out
    assert f"-> {steps:,} steps" in out and f"train.time={BUDGET:g}s:" in out
    # the schedule is fitted to the derived total: the last step's lr is cosine's at N-1 of N
    last = [r for r in _records(result.run_dir) if "lr" in r][-1]
    assert last["step"] == steps
    assert last["lr"] == pytest.approx(
        0.05 * lr_factor(steps - 1, steps, 1, ScheduleConfig(name="cosine", min_lr_ratio=0.1)))
    assert lr_factor(steps, steps, 1, ScheduleConfig(name="cosine", min_lr_ratio=0.1)) == 0.1
    assert json.loads((result.run_dir / "summary.json").read_text())["time_budget"] == budget


def _interrupt_at(step: int):
    def callback(current: int, losses: dict) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def test_a_resumed_time_run_keeps_its_total_and_trains_as_that_many_steps(tiny_config,
                                                                          one_thread) -> None:
    """The throw-away steps leave no trace: interrupted and resumed, a train.time run ends
    bit for bit where train.steps=<its derived total> ends, and never measures again."""
    config = tiny_config(f"train.time={BUDGET:g}s", "method=deep_supervision",
                         "train.eval_every=3", "run.name=timed")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_interrupt_at(1)])
    saved = load_checkpoint(config.run.dir + "/timed/checkpoints/last.pt")["loop"]
    total = saved["derived_steps"]
    assert saved["step"] == 1 and total == saved["time_budget"]["steps"] >= 1
    resumed = train(config, resume=True)
    assert resumed.summary["steps"] == total
    assert resumed.summary["time_budget"] == saved["time_budget"]  # not measured again
    reference = train(tiny_config(f"train.steps={total}", "method=deep_supervision",
                                  "train.eval_every=3", "run.name=counted"))
    assert resumed.summary["last"] == reference.summary["last"]
    for (name, a), b in zip(reference.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not math.isnan(resumed.summary["wall_seconds"])
