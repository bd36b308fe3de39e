"""Run folders: ownership, safe --overwrite, one writer at a time, resume advice, signals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxilia.cli import main as cli
from auxilia.config import ConfigError, load_config
from auxilia.engine import NonFiniteLossError, selection, train
from auxilia.engine import evaluate as evaluate_module
from auxilia.engine import stepper as stepper_module
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.runfolder import MARKER, RunFolder, RunFolderError, RunLock, RunLockedError

BAD_NAMES = ["..", ".", "../elsewhere", "a/b", "/abs", "a\\b", ".hidden", "x" * 129, "a\x00b",
             "tab\there", ""]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _base(runs: Path, name: str = "r") -> list[str]:
    return [f"run.dir={runs}", f"run.name={name}", "run.progress=off", "run.tensorboard=false",
            "run.plot=false", "data.batch_size=64"]


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_name_must_be_a_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.name"):
        load_config(None, [f"run.name={json.dumps(name)}"])


def test_cli_refuses_dot_dot_without_touching_the_working_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    assert cli(["train", f"run.dir={tmp_path}", "run.name=..", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "run.name" in err and "Traceback" not in err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_a_folder_auxilia_did_not_create(tiny_config, tmp_path: Path) -> None:
    mine = tmp_path / "runs" / "r"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "config.yaml").write_text("mine: true\n")  # looks like a run, is not one
    with pytest.raises(RunFolderError, match=rf"refuses to replace .*{MARKER}"):
        train(tiny_config("run.name=r", "train.steps=2"), overwrite=True)
    assert _files(mine) == {"thesis.tex": b"years of work", "config.yaml": b"mine: true\n"}


def test_overwrite_refuses_a_run_folder_holding_foreign_files(tiny_config) -> None:
    run = train(tiny_config("run.name=r", "train.steps=2")).run_dir
    (run / "notes.txt").write_text("my notes")
    (run / "checkpoints" / "keep-me.pt").write_bytes(b"precious")
    before = _files(run)
    with pytest.raises(RunFolderError, match=r"checkpoints/keep-me\.pt, notes\.txt"):
        train(tiny_config("run.name=r", "train.steps=2"), overwrite=True)
    assert _files(run) == before


def test_overwrite_replaces_an_auxilia_run_and_leaves_nothing_aside(tiny_config) -> None:
    config = tiny_config("run.name=r", "train.steps=2")
    run = train(config).run_dir
    first = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    result = train(tiny_config("run.name=r", "train.steps=4"), overwrite=True)
    assert result.summary["steps"] == 4 and (run / MARKER).is_file()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["step"] == 4
    assert first  # the old run's weights were read before it was replaced
    assert sorted(p.name for p in run.parent.iterdir()) == ["r"]  # no aside, no lock left


@pytest.mark.parametrize("failure", ["nan_at_first_step", "bad_view_name", "ctrl_c_twice"])
def test_a_run_that_fails_before_its_first_checkpoint_leaves_the_old_run_as_it_was(
        tiny_config, failure: str) -> None:
    run = train(tiny_config("run.name=r", "train.steps=3")).run_dir
    before = _files(run)
    if failure == "nan_at_first_step":
        config = tiny_config("run.name=r", "optim.lr=1e12", "train.steps=50",
                             "train.eval_every=40")
        with pytest.raises(NonFiniteLossError):
            train(config, overwrite=True)
    elif failure == "bad_view_name":
        with pytest.raises(ValueError, match="x_nope"):
            train(tiny_config("run.name=r", "data.views={x_nope: weak}"), overwrite=True)
    else:
        def abort(step: int, losses: dict[str, float]) -> None:
            if step == 2:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)  # the second one aborts at once
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config("run.name=r", "train.steps=50", "train.eval_every=40"),
                  overwrite=True, callbacks=[abort])
    assert _files(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["r"]


# ----------------------------------------------------------------------------- the lock


_HOLDER = """
import sys, time
from pathlib import Path
from auxilia.engine.runfolder import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_naming_the_holder_and_a_crash_never_locks_forever(
        tiny_config, tmp_path: Path) -> None:
    config = tiny_config("run.name=r", "train.steps=2")
    folder = Path(config.run.dir) / "r"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on "):
            train(config)
        assert not folder.exists()  # refused before anything was written
        with pytest.raises(RunLockedError):
            train(config, overwrite=True)
    finally:
        holder.kill()  # SIGKILL: the holder never releases the lock itself
        holder.wait(timeout=30)
    assert train(config).summary["steps"] == 2  # the kernel released the crashed holder's lock


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"), pytest.raises(RunLockedError,
                                                 match=f"process {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # released on exit
        pass
    assert list(tmp_path.iterdir()) == []  # the lock file goes with the lock


# ----------------------------------------------------------------------------- resume advice


def test_resume_without_last_pt_beside_best_pt_advises_keeping_best(
        tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tiny_config("run.name=r", "train.steps=4", "train.eval_every=2")).run_dir
    folder = RunFolder(run)
    folder.last.unlink()
    assert cli(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"cp {folder.best} {folder.last}" in err and "--overwrite would delete it" in err
    assert "start it again with --overwrite" not in err and folder.best.is_file()
    folder.last.write_bytes(folder.best.read_bytes())  # following the advice resumes
    assert cli(["train", "--resume", str(run), "run.progress=off"]) == 0


def test_resume_with_overrides_names_only_the_keys_they_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert cli(["train", *_base(runs), "train.steps=4", "optim.lr=0.1", "seed=3"]) == 0
    run = runs / "r"
    capsys.readouterr()
    assert cli(["train", "--resume", str(run), "optim.lr=0.2", "train.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: checkpoint has 0.1, config gives 0.2" in err
    assert "seed" not in err and "run.dir" not in err and "train.device" not in err
    # keys that do not change the results may be overridden (the run is already complete)
    assert cli(["train", "--resume", str(run), "train.device=cpu", "run.progress=off"]) == 0


# ----------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_validation_is_never_selected(bad: float) -> None:
    good = {"val/final/top1": 50.0, "val/loss": 1.0}
    assert selection.is_better(good, None)
    assert not selection.is_better({"val/final/top1": 90.0, "val/loss": bad}, None)
    assert not selection.is_better({"val/final/top1": bad, "val/loss": 0.5}, None)
    best = {"val": {"final/top1": 50.0, "loss": 1.0}}
    assert not selection.is_better({"val/final/top1": 99.0, "val/loss": bad}, best)


def test_a_run_whose_validation_is_never_finite_selects_nothing_and_writes_strict_json(
        tiny_config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    real = evaluate_module.evaluate

    def nan_loss(*args: object, **kwargs: object) -> dict[str, float]:
        return {**real(*args, **kwargs), "loss": math.nan}

    monkeypatch.setattr(evaluate_module, "evaluate", nan_loss)  # every evaluation of the run
    result = train(tiny_config("run.name=r", "train.steps=4", "train.eval_every=2"))
    assert result.summary["best_val"] is None
    assert not (result.run_dir / "checkpoints" / "best.pt").exists()
    with pytest.raises(ValueError, match="no checkpoint was selected"):
        _ = result.test_top1

    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    json.loads((result.run_dir / "summary.json").read_text(), parse_constant=refuse)
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    from auxilia.cli import _print_summary

    _print_summary(result.summary)
    assert "no checkpoint was selected" in capsys.readouterr().out


# ----------------------------------------------------------------------------- batch size


def test_a_batch_larger_than_the_training_split_is_noted_and_images_counted_as_used(
        tiny_config) -> None:
    result = train(tiny_config("run.name=r", "data.train_subset=30", "data.batch_size=64",
                               "train.steps=5"))
    summary = result.summary
    assert any("data.batch_size=64 is larger than the 30 training images" in n
               for n in summary["notes"])
    assert summary["train_images"] == 5 * 30
    # images/s = images / seconds (the summary rounds the seconds to 1 ms)
    rate, seconds = summary["train_images_per_s"], summary["train_seconds"]
    assert abs(rate * seconds - 150) <= rate * 0.0005 + 0.1


def test_images_per_second_counts_samples_and_views_separately(tiny_config) -> None:
    summary = train(tiny_config("run.name=r", "method=ddgsd", "train.steps=3")).summary
    assert summary["train_images"] == 3 * 64
    assert summary["train_views_per_s"] == pytest.approx(2 * summary["train_images_per_s"],
                                                         rel=0.01)


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_finishes_the_step_writes_last_pt_and_exits_143(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [*_base(runs, "term"), "run.progress=plain", "train.steps=400",
            "train.eval_every=1000", "train.log_every=10"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "auxilia.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("step 10/400"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received: stopped at step" in out
    assert f"Resume with: auxilia train --resume {runs / 'term'}" in out
    step = load_checkpoint(runs / "term" / "checkpoints" / "last.pt")["loop"]["step"]
    assert 10 <= step < 400
    resumed = train(load_config(None, [*_base(runs, "term"), "train.steps=400",
                                       "train.eval_every=1000", "train.log_every=10"]),
                    resume=True)
    reference = train(load_config(None, [*_base(runs, "straight"), "train.steps=400",
                                         "train.eval_every=1000", "train.log_every=10"]))
    assert resumed.summary["last"] == reference.summary["last"]


def test_a_killed_overwrite_keeps_the_old_run_aside_and_says_where(tiny_config) -> None:
    config = tiny_config("run.name=r", "train.steps=3")
    run = train(config).run_dir
    before = _files(run)
    driver = Path(__file__).with_name("fault_driver.py")
    spec = {"overrides": [f"run.dir={run.parent}", "run.name=r", "run.progress=off",
                          "run.tensorboard=false", "run.plot=false", "train.steps=50",
                          "train.eval_every=40"],
            "overwrite": True, "fault": "step", "at": 2}
    proc = subprocess.run([sys.executable, str(driver), json.dumps(spec)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    aside = [p for p in run.parent.iterdir() if p.name.startswith(".replaced.r.")]
    assert len(aside) == 1 and _files(aside[0]) == before  # nothing of the old run is lost
    result = train(config, overwrite=True)
    assert any(f"{aside[0]} holds a run that an interrupted --overwrite moved aside" in n
               for n in result.summary["notes"])
    assert aside[0].is_dir()  # auxilia tells, and leaves the decision to the user


def test_skipped_steps_stay_out_of_the_logged_averages(tiny_config,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = stepper_module.forward_all, [0]

    def poisoned(*args: object, **kwargs: object) -> dict:
        calls[0] += 1
        outputs = real(*args, **kwargs)
        if 3 <= calls[0] <= 10:  # steps 3 to 10 give a NaN loss
            main = outputs[("student", "x_lb")]["final"]
            main["logits"] = main["logits"] * float("nan")
        return outputs

    monkeypatch.setattr(stepper_module, "forward_all", poisoned)
    result = train(tiny_config("run.name=r", "train.on_nonfinite=skip", "train.steps=15",
                               "train.log_every=5", "train.eval_every=100"))
    assert result.summary["skipped_steps"] == 8
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = {r["step"]: r for r in lines if "lr" in r}
    assert math.isfinite(train_lines[5]["train/loss"])  # steps 1-2 only
    assert "train/loss" not in train_lines[10] and train_lines[10]["train/skipped_window"]
    assert math.isfinite(train_lines[15]["train/loss"])
