"""Sweep, pipeline and report folders are auxilia's only when auxilia made them, and one
process writes them at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from auxilia.cli import main as cli
from auxilia.compare.collect import collect
from auxilia.compare.report import write_report
from auxilia.compare.runner import run_sweep
from auxilia.compare.spec import SweepError, load_sweep, quick_sweep
from auxilia.compare.sweepfolder import sweep_owner
from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.runfolder import RunFolderError, RunLockedError

TINY = ["run.tensorboard=false", "run.plot=false", "data.batch_size=64", "train.steps=4",
        "train.eval_every=4"]


def _sweep(runs: Path, methods: str = "supervised", seeds: int = 1, name: str = "sw",
           extra: tuple[str, ...] = ()):
    return quick_sweep(None, methods, seeds, [f"run.dir={runs}", *TINY, *extra], name=name)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_sweep_named_after_a_users_folder_is_refused_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "sw"
    mine.mkdir()
    (mine / "sweep.json").write_text("my own notes")
    (mine / "data.csv").write_text("a,b\n")
    before = _snapshot(mine)
    with pytest.raises(RunFolderError, match=r"auxilia did not make it as a sweep folder "
                                             r"\(it holds data.csv, sweep.json\)"):
        run_sweep(_sweep(tmp_path), display=False)
    assert _snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw"]  # no lock file, nothing else


def test_a_sweep_is_never_made_in_or_inside_a_run_folder(tmp_path: Path) -> None:
    run = train(load_config(None, [f"run.dir={tmp_path}", "run.name=sw", "run.progress=off",
                                   *TINY])).run_dir
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match="is the run folder"):
        run_sweep(_sweep(tmp_path), display=False)
    with pytest.raises(RunFolderError, match="would be inside the run folder"):
        run_sweep(_sweep(run / "checkpoints"), display=False)
    assert _snapshot(run) == before


def test_report_never_writes_into_a_run_sweep_or_users_folder(tmp_path: Path) -> None:
    outcome = run_sweep(_sweep(tmp_path / "runs"), display=False)
    run = outcome.folder / "supervised" / "seed0"
    collection = collect([outcome.folder])
    for out, match in ((run, "is the run folder"), (run / "export", "inside the run folder"),
                       (outcome.folder, "is a sweep folder, not a report folder")):
        before = _snapshot(outcome.folder)
        with pytest.raises(RunFolderError, match=match):
            write_report(collection, out)
        assert _snapshot(outcome.folder) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    assert cli(["report", str(outcome.folder), "--out", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    write_report(collection, tmp_path / "new")  # a new folder, then again: its own
    assert (tmp_path / "new" / ".auxilia-report").is_file()
    write_report(collection, tmp_path / "new")


def test_a_sweep_folder_of_another_sweep_is_refused_naming_the_differences(
        tmp_path: Path) -> None:
    run_sweep(_sweep(tmp_path, "supervised,deep_supervision"), display=False)
    record = (tmp_path / "sw" / "sweep.json").read_bytes()
    with pytest.raises(SweepError, match=r"variants 'deep_supervision' are recorded but not in "
                                         r"this sweep"):
        run_sweep(_sweep(tmp_path, "supervised"), display=False)
    with pytest.raises(SweepError, match=r"overrides: .*optim.lr=0.5"):
        run_sweep(_sweep(tmp_path, "supervised,deep_supervision", extra=("optim.lr=0.5",)),
                  display=False)
    assert (tmp_path / "sw" / "sweep.json").read_bytes() == record
    # adding a seed and a variant, or changing what does not change results, continues it
    more = run_sweep(_sweep(tmp_path, "supervised,deep_supervision,cds", 2,
                            extra=("train.device=cpu",)), display=False)
    assert more.skipped == ["supervised/seed0", "deep_supervision/seed0"]
    assert len(more.finished) == 4


def test_a_run_folder_the_sweep_could_not_write_is_refused_before_anything_trains(
        tmp_path: Path) -> None:
    run_sweep(_sweep(tmp_path), display=False)
    blocker = tmp_path / "sw" / "deep_supervision" / "seed0"
    blocker.mkdir(parents=True)
    (blocker / "results.txt").write_text("mine")
    with pytest.raises(SweepError,
                       match=r"variant 'deep_supervision' seed 0: .*no .auxilia-run marker"):
        run_sweep(_sweep(tmp_path, "supervised,cds,deep_supervision"), display=False)
    assert not (tmp_path / "sw" / "cds").exists()  # nothing trained
    assert (blocker / "results.txt").read_text() == "mine"


def test_a_sweep_folder_from_before_markers_is_taken_over(tmp_path: Path) -> None:
    run_sweep(_sweep(tmp_path), display=False)
    (tmp_path / "sw" / ".auxilia-sweep").unlink()
    again = run_sweep(_sweep(tmp_path), display=False)
    assert again.skipped == ["supervised/seed0"]
    assert (tmp_path / "sw" / ".auxilia-sweep").is_file()


def test_a_second_compare_of_one_sweep_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = rf"sweep folder {tmp_path / 'sw'} is in use by process {os.getpid()}"
    with sweep_owner(tmp_path / "sw").lock(), pytest.raises(RunLockedError, match=held):
        run_sweep(_sweep(tmp_path), display=False)  # as if another process held it
    assert not (tmp_path / "sw").exists()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "auxilia.cli", "compare", "-", "--methods", "supervised",
            "--seeds", "1", "--name", "sw", f"run.dir={tmp_path}", "run.tensorboard=false",
            "run.plot=false", "train.steps=400", "train.eval_every=400"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        record = tmp_path / "sw" / "sweep.json"
        deadline = time.monotonic() + 60
        while not record.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by process {first.pid}" in second.stderr
        assert json.loads(record.read_text())["runs"][0]["status"] in ("pending", "running")
    finally:
        first.kill()
        first.wait()


def test_compare_and_report_name_their_mistakes(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("method: supervised\ntrain:\n  epochs: 1\n")
    cases = [
        (["compare", str(config)], f"{config} is a training config, not a sweep file: compare "
                                   f"methods on it with auxilia compare {config} --methods"),
        (["compare", str(config), "--methods", "supervised", "--workers", "0"],
         "--workers 0: give a whole number >= 1"),
        (["compare", str(config), "--methods", "supervised", "--k", "0"],
         "--k 0: give a whole number >= 1"),
        (["report", str(tmp_path), "--k", "0"], "--k 0: give a whole number >= 1"),
        (["report", str(tmp_path)], f"{tmp_path}: no run folder in it"),
    ]
    empty_sweep = tmp_path / "sw"
    empty_sweep.mkdir()
    (empty_sweep / "sweep.json").write_text('{"name": "sw", "variants": [], "runs": []}')
    cases.append((["report", str(empty_sweep)], f"{empty_sweep}: no runs to report"))
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw", "train.yaml"]  # nothing ran


def test_report_counts_each_run_and_variant_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        train(load_config(None, [f"run.dir={runs}", f"run.name=r{seed}", f"seed={seed}",
                                 "run.progress=off", *TINY]))
    (tmp_path / "link").symlink_to(runs)
    collection = collect([runs, runs / "r0", tmp_path / "link" / "r1"])
    assert collection.variants == ["supervised"]
    assert sorted(r.path.name for r in collection.records) == ["r0", "r1"]
    write_report(collection, tmp_path / "rep")
    rows = (tmp_path / "rep" / "runs.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # the header and two runs
    assert (tmp_path / "rep" / "results.csv").read_text().count("\nsupervised,") == 1


def test_folder_shapes_that_are_no_sweep_folder_are_named(tmp_path: Path) -> None:
    odd = tmp_path / "sw"
    odd.mkdir()
    (odd / "sweep.json").write_text('{"runs": {}}')  # a record auxilia never wrote
    with pytest.raises(RunFolderError, match=r"auxilia did not make it as a sweep folder "
                                             r"\(it holds sweep.json\)"):
        run_sweep(_sweep(tmp_path), display=False)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(RunFolderError, match=f"cannot be made: {a_file} is a file"):
        run_sweep(_sweep(a_file), display=False)
    assert cli(["report", str(tmp_path), "--out", str(a_file / "sub")]) == 2
    assert a_file.read_text() == "x"


def test_a_sweep_or_report_is_never_made_inside_another_sweeps_folders(tmp_path: Path) -> None:
    first = run_sweep(_sweep(tmp_path, name="outer"), display=False).folder
    before = _snapshot(first)
    with pytest.raises(RunFolderError, match=f"would be inside the sweep folder {first}"):
        run_sweep(_sweep(first / "supervised", name="inner"), display=False)
    with pytest.raises(RunFolderError, match=f"would be inside the sweep folder {first}"):
        write_report(collect([first]), first / "supervised" / "rep")
    assert _snapshot(first) == before
    write_report(collect([first]), first / "mine")  # directly in the sweep folder: a report


def test_equivalent_sweeps_continue_and_a_folder_clash_says_which_folder_to_set(
        tmp_path: Path) -> None:
    def sweep_file(labels: list[str], overrides: list[str]) -> Path:
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({
            "name": "sw", "overrides": [f"run.dir={tmp_path}", *TINY, *overrides], "seeds": 1,
            "variants": [{"label": label, "method": "supervised"} for label in labels]}))
        return path

    run_sweep(load_sweep(sweep_file(["a-b"], ["optim.lr=0.1", "optim.momentum=0.8"])),
              display=False)
    again = run_sweep(load_sweep(sweep_file(["a-b"], ["optim.momentum=0.8", "optim.lr=0.1"])),
                      display=False)  # the same overrides in another order
    assert again.skipped == ["a-b/seed0"]
    clash = load_sweep(sweep_file(["a b", "a-b"], ["optim.lr=0.1", "optim.momentum=0.8"]))
    with pytest.raises(SweepError, match=r"variant 'a-b' keeps its runs in folder 'a-b' and "
                                         r"would now get 'a-b-2' .* set folder: a-b on variant"):
        run_sweep(clash, display=False)


def test_a_duplicate_key_in_the_sweeps_own_overrides_is_named_as_such(tmp_path: Path) -> None:
    sweep = quick_sweep(None, "supervised", 1, [f"run.dir={tmp_path}", *TINY,
                                                "optim={name: sgd, lr: 0.1, lr: 0.2}"])
    with pytest.raises(SweepError, match=r"the sweep's overrides \(for every variant\): "
                                         r".*'lr' appears twice"):
        run_sweep(sweep, display=False)


def test_each_file_kind_given_to_the_wrong_command_names_the_right_one(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep, pipeline = tmp_path / "sweep.yaml", tmp_path / "pipe.yaml"
    sweep.write_text("name: s\nvariants: [{label: a, method: supervised}]\n")
    pipeline.write_text("name: p\nrounds: [{name: first}]\n")
    config = tmp_path / "train.yaml"
    config.write_text("method: supervised\n")
    for argv, message in (
            (["compare", str(pipeline)], f"{pipeline} is a pipeline file (it has rounds), not a "
                                         f"sweep file: run it with auxilia rounds {pipeline}"),
            (["train", str(sweep)], f"{sweep} is a sweep file (it has variants), not a training "
                                    f"config: run it with auxilia compare {sweep}"),
            (["rounds", str(sweep)], f"{sweep} is a sweep file (it has variants), not a "
                                     f"pipeline file: run it with auxilia compare {sweep}"),
            (["rounds", str(config)], f"{config} is a training config, not a pipeline file (it "
                                      f"has no rounds): train it with auxilia train {config}")):
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {message}"], (argv, err)


def test_a_bool_for_a_number_in_a_sweep_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nworkers: true\nbudget: {steps: true}\n"
                    "variants: [{label: a, method: supervised}]\n")
    with pytest.raises(SweepError, match=r"budget.steps: must be a whole number \(expected int "
                                         r">= 1 or null, got true\)\n  workers: must be a whole "
                                         r"number \(expected int >= 1, got true\)"):
        load_sweep(path)


def test_report_refuses_runs_tested_on_different_data(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    digits = train(load_config(None, [f"run.dir={tmp_path}", "run.name=d", "run.progress=off",
                                      *TINY])).run_dir
    other = train(load_config(None, [f"run.dir={tmp_path}", "run.name=o", "run.progress=off",
                                     *TINY, "data.split_seed=1", "optim.lr=0.01"])).run_dir
    with pytest.raises(ValueError, match=f"{digits} and {other} were tested on different data"):
        write_report(collect([digits, other]), tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
    sweep = run_sweep(_sweep(tmp_path / "sw"), display=False).folder
    assert cli(["report", str(sweep), str(digits)]) == 2
    assert "are two runs of 'supervised' at seed 0: a report holds one run per variant and " \
           "seed; report them separately" in capsys.readouterr().err


def test_sweep_and_pipeline_files_refuse_a_key_set_twice_and_a_missing_teacher(
        tmp_path: Path) -> None:
    from auxilia.engine.rounds import RoundsError, load_pipeline

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\noverrides: [optim.lr=0.1, optim.lr=0.2]\n"
                     "variants: [{label: a, method: supervised}]\n")
    with pytest.raises(SweepError, match=r"overrides: optim.lr is set twice \('optim.lr=0.1', "
                                         r"then 'optim.lr=0.2'\); keep one"):
        load_sweep(sweep)
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text("name: p\nrounds: [{name: a, overrides: [seed=1, seed=2]}]\n")
    with pytest.raises(RoundsError, match=r"round 'a' overrides: seed is set twice"):
        load_pipeline(pipeline)
    kd = quick_sweep(None, "kd", 2, [f"run.dir={tmp_path}", *TINY,
                                     f"teacher.run={tmp_path}/teachers/seed{{seed}}"], name="kd")
    (tmp_path / "teachers" / "seed0").mkdir(parents=True)  # only seed 0 has a teacher
    with pytest.raises(SweepError, match=rf"variant 'kd' seed 1: teacher.run={tmp_path}/"
                                         rf"teachers/seed1: no such run folder or checkpoint"):
        run_sweep(kd, display=False)
    assert not (tmp_path / "kd").exists()
