"""A sweep on a wall-clock budget: every run derives its own steps, the report says so."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from auxilia.compare.collect import SWEEP_FILE, collect
from auxilia.compare.report import write_report
from auxilia.compare.runner import run_sweep
from auxilia.compare.spec import SweepError, budget_overrides, load_sweep, plan_sweep, quick_sweep
from auxilia.compare.sweepfolder import SweepRecord, check_same_sweep

TINY = ["run.tensorboard=false", "run.plot=false", "data.batch_size=64", "train.eval_every=5"]


def _sweep_file(tmp_path: Path, budget: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: timed\nseeds: 1\nbudget: {budget}\noverrides: [run.dir={tmp_path}]\n"
                    "variants:\n  - {label: plain, method: supervised}\n"
                    "  - {label: ds, method: deep_supervision}\n")
    return path


def test_a_sweep_files_time_budget_is_canonical_and_replaces_the_bases_length(
        tmp_path: Path) -> None:
    sweep = load_sweep(_sweep_file(tmp_path, "{time: 120s}"))
    assert sweep.budget == {"time": "2m"}
    assert budget_overrides(sweep.budget) == ["train.time=2m", "train.steps=null"]
    assert budget_overrides({"steps": 50}) == ["train.steps=50", "train.time=null"]
    base = tmp_path / "base.yaml"
    base.write_text("train: {steps: 500}\n")  # a length in steps: the time budget replaces it
    sweep = load_sweep(_sweep_file(tmp_path, "{time: 2m}"), [f"run.dir={tmp_path}"])
    sweep = type(sweep)(**{**sweep.__dict__, "base": base})
    config = plan_sweep(sweep)[0].config
    assert (config.train.time, config.train.steps) == ("2m", None)
    with pytest.raises(SweepError) as err:
        load_sweep(_sweep_file(tmp_path, "{time: soon}"))
    assert "budget.time: expected a duration, 15m, 90s, 1h30m, 2.5m" in str(err.value)


def test_a_sweep_folder_refuses_another_time_budget_but_not_another_spelling(
        tmp_path: Path) -> None:
    sweep = load_sweep(_sweep_file(tmp_path, "{time: 2m}"))
    folder = tmp_path / "timed"
    folder.mkdir()
    SweepRecord(folder, sweep, plan_sweep(sweep)).write()
    check_same_sweep(folder, load_sweep(_sweep_file(tmp_path, "{time: 120s}")))
    with pytest.raises(SweepError, match=r"budget: the folder's runs have \{'time': '2m'\}, this "
                                         r"sweep gives \{'time': '3m'\}"):
        check_same_sweep(folder, load_sweep(_sweep_file(tmp_path, "{time: 3m}")))
    quick = quick_sweep(None, "supervised", 1, [f"run.dir={tmp_path / 'q'}", "train.time=2m"],
                        name="q")
    (tmp_path / "q" / "q").mkdir(parents=True)
    SweepRecord(tmp_path / "q" / "q", quick, plan_sweep(quick)).write()
    same = quick_sweep(None, "supervised", 1, [f"run.dir={tmp_path / 'q'}", "train.time=120s"],
                       name="q")
    check_same_sweep(tmp_path / "q" / "q", same)
    other = quick_sweep(None, "supervised", 1, [f"run.dir={tmp_path / 'q'}", "train.time=1m"],
                        name="q")
    with pytest.raises(SweepError, match="overrides"):
        check_same_sweep(tmp_path / "q" / "q", other)


@pytest.fixture
def one_thread():
    """One torch thread while runs time themselves (see tests/engine/test_time_budget.py):
    on a shared CPU two threads jitter a digits step from 15 ms to nearly a second."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_quick_sweep_on_time_records_each_variants_own_steps(tmp_path: Path,
                                                               one_thread) -> None:
    sweep = quick_sweep(None, "supervised,deep_supervision", 1,
                        [f"run.dir={tmp_path}", *TINY, "train.time=8s"], name="t")
    outcome = run_sweep(sweep, display=False)
    assert not outcome.failed and len(outcome.finished) == 2
    assert json.loads((outcome.folder / SWEEP_FILE).read_text())["overrides"][-1] == \
        "train.time=8s"
    collection = collect([outcome.folder])
    steps = {}
    for record in collection.records:
        budget = record.summary["time_budget"]
        assert budget["time"] == "8s" and budget["steps"] == record.summary["steps"] >= 1
        steps[record.variant] = record.summary["steps"]
    write_report(collection, outcome.folder / "results")
    results = (outcome.folder / "results" / "results.md").read_text()
    assert "a train.time=8s budget per run" in results
    assert "| variant | seeds | steps |" in results
    for variant, n in steps.items():
        assert f"| {variant} | 1 | {n:,} |" in results
    runs = list(csv.DictReader(io.StringIO(
        (outcome.folder / "results" / "runs.csv").read_text())))
    assert {r["variant"]: int(float(r["steps"])) for r in runs} == steps
    assert all(float(r["wall_seconds"]) > 0 for r in runs)


def test_a_length_in_the_overrides_beside_the_budgets_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nseeds: 1\nbudget: {time: 4s}\noverrides: [train.steps=5]\n"
                    "variants: [{label: a, method: supervised}]\n")
    with pytest.raises(SweepError, match=r"overrides set train\.steps=5 and its budget: sets "
                                         r"\{time: 4s\}: two lengths"):
        load_sweep(path)
    path.write_text("name: s\nseeds: 1\nbudget: {steps: 5}\n"
                    "variants: [{label: a, method: supervised}]\n")
    with pytest.raises(SweepError, match="two lengths"):
        load_sweep(path, ["train.time=3s"])  # from the command line alike
    path.write_text("name: s\nseeds: 1\nbudget: {steps: 5}\noverrides: [optim.lr=0.1]\n"
                    "variants: [{label: a, method: supervised}]\n")
    assert load_sweep(path).budget == {"steps": 5}
