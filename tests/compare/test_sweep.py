"""Sweeps end to end on the bundled digits: resumable, failures reported, one data read."""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path

import pytest

from auxilia.cli import main as cli
from auxilia.compare.collect import collect
from auxilia.compare.report import write_report
from auxilia.compare.runner import DataCache, run_sweep
from auxilia.compare.spec import quick_sweep
from auxilia.config import load_config
from auxilia.data.sources import load_dataset
from auxilia.engine import train

TINY = ["run.tensorboard=false", "run.plot=false", "data.batch_size=64", "train.epochs=2",
        "train.eval_every=10"]
TIMING = {"train_seconds_mean", "train_seconds_std", "images_per_s_mean"}


def _sweep(runs: Path, methods: str = "supervised,deep_supervision", seeds: int = 2,
           name: str = "sw"):
    return quick_sweep(None, methods, seeds, [f"run.dir={runs}", *TINY], name=name)


def _figures(folder: Path) -> list[dict[str, str]]:
    """results.csv without the timing columns (they differ between any two runs)."""
    rows = list(csv.DictReader(io.StringIO((folder / "results" / "results.csv").read_text())))
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_an_interrupted_sweep_resumes_to_the_same_results(tmp_path: Path) -> None:
    whole = run_sweep(_sweep(tmp_path / "a"), display=False)
    assert len(whole.finished) == 4 and not whole.failed
    write_report(collect([whole.folder]), whole.folder / "results")

    def stop(key: str, step: int) -> None:
        if key == "supervised/seed1" and step == 12:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the run writes last.pt, then stops

    sweep = _sweep(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, display=False, on_step=stop)
    record = json.loads((tmp_path / "b" / "sw" / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished", "finished", "interrupted",
                                                     "pending"]
    again = run_sweep(sweep, display=False)
    assert again.skipped == ["supervised/seed0", "deep_supervision/seed0"]
    assert again.finished == ["supervised/seed1", "deep_supervision/seed1"]
    write_report(collect([again.folder]), again.folder / "results")
    assert _figures(again.folder) == _figures(whole.folder)
    assert json.loads((again.folder / "supervised" / "seed1" / "summary.json").read_text())[
        "steps"] == 38


def test_a_failed_run_is_reported_and_not_averaged_in(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "supervised,[{name: deep_supervision, exits: {s9: 0.3}}]", 1)
    outcome = run_sweep(sweep, display=False)
    assert outcome.finished == ["supervised/seed0"]
    (key, error), = outcome.failed.items()
    assert "s9" in error and key.endswith("/seed0")
    collection = collect([outcome.folder])
    failed = [r for r in collection.records if r.status == "failed"]
    assert len(failed) == 1 and "s9" in failed[0].error
    write_report(collection, outcome.folder / "results")
    text = (outcome.folder / "results" / "results.md").read_text()
    assert "Not averaged in" in text and "failed" in text and "s9" in text
    rows = {r["variant"]: r for r in csv.DictReader(
        io.StringIO((outcome.folder / "results" / "results.csv").read_text()))}
    bad = next(v for v in rows if v != "supervised")
    assert rows[bad]["seeds"] == "0" and rows[bad]["unfinished"] == "1"
    assert rows[bad]["test_final_selected_mean"] == ""
    assert rows["supervised"]["seeds"] == "1"


def test_the_data_is_read_once_for_all_runs_that_share_it() -> None:
    cache = DataCache()
    a = load_config(None, ["seed=0", "data.train_subset=600", "method=supervised"])
    b = load_config(None, ["seed=1", "data.train_subset=600", "method=cds",
                           "data.batch_size=16"])
    first, second = cache.get(a), cache.get(b)
    assert cache.reads == 1
    direct = load_dataset(b.data, seed=1)
    assert second.train.keys.tolist() == direct.train.keys.tolist()  # the seed's own subset
    assert first.train.keys.tolist() != second.train.keys.tolist()
    assert second.test.keys.tolist() == first.test.keys.tolist()      # test fixed by split_seed
    assert second.notes == direct.notes  # one run's notes do not leak into the next
    cache.get(load_config(None, ["data.val_fraction=0.2"]))
    assert cache.reads == 1  # carves act after reading
    cache.get(load_config(None, ["data.image_size=16"]))
    assert cache.reads == 2


def test_workers_train_the_runs_in_their_own_processes(tmp_path: Path) -> None:
    outcome = run_sweep(_sweep(tmp_path, seeds=1), workers=2, display=False)
    assert sorted(outcome.finished) == ["deep_supervision/seed0", "supervised/seed0"]
    record = json.loads((outcome.folder / "sweep.json").read_text())
    assert {r["status"] for r in record["runs"]} == {"finished"}


def test_report_groups_runs_made_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    for items in (["method=supervised", "seed=0"], ["method=supervised", "seed=1"],
                  ["method=supervised", "seed=0", "optim.lr=0.01"]):
        train(load_config(None, [f"run.dir={runs}", "run.progress=off", *TINY, *items,
                                 f"run.name=r{len(list(runs.glob('*'))) if runs.exists() else 0}"]))
    collection = collect([runs])
    labels = {r.path.name: r.variant for r in collection.records}
    assert labels["r0"] == labels["r1"] != labels["r2"]
    assert "optim.lr=0.01" in labels["r2"]
    assert cli(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "results.md").is_file()
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 5000
    assert "supervised" in capsys.readouterr().out


def test_report_refuses_to_replace_files_it_did_not_write(tmp_path: Path) -> None:
    outcome = run_sweep(_sweep(tmp_path, "supervised", 1), display=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="auxilia did not make it as a report folder"):
        write_report(collect([outcome.folder]), mine)
    assert (mine / "results.md").read_text() == "my notes"


def test_compare_command_quick_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli(["compare", "-", "--methods", "supervised,[deep_supervision]", "--seeds", "1",
                "--name", "quick", f"run.dir={tmp_path}", *TINY])
    assert code == 0
    out = capsys.readouterr().out
    assert "Δ vs supervised (paired)" in out and "deep_supervision" in out
    results = tmp_path / "quick" / "results"
    assert {p.name for p in results.iterdir()} >= {"results.md", "results.csv", "runs.csv",
                                                   "curves.png", "exits.png"}
    # run again: every run is finished, nothing trains, the report is rewritten
    assert cli(["compare", "-", "--methods", "supervised,[deep_supervision]", "--seeds", "1",
                "--name", "quick", f"run.dir={tmp_path}", *TINY]) == 0
    assert "2 finished before" in capsys.readouterr().out

