"""Pipelines keep the promises of single runs: an owned, locked folder, a state that says how
it ended, stop means stop, and a failing round is named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from auxilia.cli import main as cli
from auxilia.config import Config, load_config
from auxilia.engine import run as engine_run
from auxilia.engine import train
from auxilia.engine.pipefolder import pipeline_owner
from auxilia.engine.rounds import Pipeline, Round, RoundFailedError, RoundsError, run_pipeline
from auxilia.engine.runfolder import RunFolderError, RunLockedError
from auxilia.engine.signals import Interrupted

TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "data.batch_size=32",
        "train.steps=4", "train.eval_every=4"]
ROUNDS = (Round("first"), Round("second", ("model.weights={first}/checkpoints/best.pt",)))
BAD_ROUND = Round("second", ("method=[{name: deep_supervision, exits: {s9: 0.3}}]",))


def _base(runs: Path) -> Config:
    return load_config(None, [f"run.dir={runs}", *TINY])


def _state(runs: Path, name: str = "pipe") -> dict:
    return json.loads((runs / name / "pipeline.json").read_text())


def _pipeline_file(tmp_path: Path, rounds: list[dict], *extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipe.yaml"
    given = {item.partition("=")[0] for item in extra}  # a key once per list: extra wins
    tiny = [item for item in TINY if item.partition("=")[0] not in given]
    path.write_text(yaml.safe_dump({"name": "pipe", "overrides": [f"run.dir={tmp_path}", *tiny,
                                                                  *extra], "rounds": rounds}))
    return path


def test_a_pipeline_records_its_state_and_is_never_made_in_a_users_or_run_folder(
        tmp_path: Path) -> None:
    run_pipeline(Pipeline("pipe", _base(tmp_path), ROUNDS))
    state = _state(tmp_path)
    assert state["status"] == "finished"
    assert [r["status"] for r in state["rounds"]] == ["finished", "finished"]
    assert (tmp_path / "pipe" / ".auxilia-pipeline").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "first").mkdir()
    (mine / "first" / "notes.txt").write_text("keep")
    with pytest.raises(RunFolderError, match=r"auxilia did not make it as a pipeline folder "
                                             r"\(it holds first\)"):
        run_pipeline(Pipeline("mine", _base(tmp_path), ROUNDS))
    assert sorted(p.name for p in mine.rglob("*")) == ["first", "notes.txt"]
    run = tmp_path / "pipe" / "first"
    with pytest.raises(RunFolderError, match=f"would be inside the run folder {run}"):
        run_pipeline(Pipeline("inner", _base(run), ROUNDS))
    assert not (run / "inner").exists()


def test_a_second_process_running_one_pipeline_is_refused_naming_the_holder(
        tmp_path: Path) -> None:
    with pipeline_owner(tmp_path / "pipe").lock(), pytest.raises(
            RunLockedError, match=f"pipeline folder {tmp_path / 'pipe'} is in use by process "
                                  f"{os.getpid()}"):
        run_pipeline(Pipeline("pipe", _base(tmp_path), ROUNDS))
    assert not (tmp_path / "pipe").exists()


def test_a_failing_round_is_named_and_recorded(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RoundFailedError, match=r"pipeline 'pipe', round 'second' \(.*second\): "
                                               r".*s9"):
        run_pipeline(Pipeline("pipe", _base(tmp_path), (ROUNDS[0], BAD_ROUND)))
    state = _state(tmp_path)
    assert state["status"] == "failed" and state["round"] == "second"
    assert [r["status"] for r in state["rounds"]] == ["finished", "failed"]
    path = _pipeline_file(tmp_path / "cli", [{"name": "first"}, {
        "name": "second", "overrides": list(BAD_ROUND.overrides)}])
    assert cli(["rounds", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith("note: ")]
    assert len(err) == 1 and err[0].startswith("error: pipeline 'pipe', round 'second'")


def test_a_signal_while_a_round_writes_its_summary_stops_the_pipeline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summarize = engine_run.summarize

    def summarize_then_signal(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return summarize(*args, **kwargs)

    monkeypatch.setattr(engine_run, "summarize", summarize_then_signal)
    with pytest.raises(Interrupted) as stopped:
        run_pipeline(Pipeline("pipe", _base(tmp_path), ROUNDS))
    assert stopped.value.signum == signal.SIGTERM
    state = _state(tmp_path)
    assert state["status"] == "interrupted" and state["stopped_by"] == "SIGTERM"
    assert [r["status"] for r in state["rounds"]] == ["finished", "pending"]
    assert not (tmp_path / "pipe" / "second").exists()


def test_sigterm_during_a_round_exits_143_and_the_printed_command_resumes_it(
        tmp_path: Path) -> None:
    path = _pipeline_file(tmp_path, [{"name": "first"}, {"name": "second"}],
                          "train.steps=3000", "train.eval_every=3000", "train.log_every=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "auxilia.cli", "rounds", str(path)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "pipe" / "first" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.is_file() and metrics.stat().st_size):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    state = _state(tmp_path)
    assert state["status"] == "interrupted" and state["stopped_by"] == "SIGTERM"
    assert [r["status"] for r in state["rounds"]] == ["interrupted", "pending"]
    assert f"Resume with: auxilia rounds {path}" in err
    assert not (tmp_path / "pipe" / "second").exists()


def test_quiet_runs_still_print_their_notes(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    train(load_config(None, [f"run.dir={tmp_path}", "run.name=r", *TINY, "data.batch_size=4096"]))
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'r'}: data.batch_size=4096 is larger than" in err


def test_a_round_inside_another_rounds_run_folder_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    rounds = (Round("first"), Round("second", ("run.dir={first}",)))
    with pytest.raises(RoundsError, match=r"round 'second': its folder .* would be inside the "
                                          r"run folder of round 'first'"):
        run_pipeline(Pipeline("pipe", _base(tmp_path), rounds))
    assert list(tmp_path.iterdir()) == []


def test_a_run_into_a_pipeline_folder_another_process_runs_is_refused(tmp_path: Path) -> None:
    run_pipeline(Pipeline("pipe", _base(tmp_path), ROUNDS))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from auxilia.engine.pipefolder import pipeline_owner; "
         "pipeline_owner(Path(sys.argv[1])).lock().acquire(); print('held', flush=True); "
         "time.sleep(120)", str(tmp_path / "pipe")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"run folder {tmp_path / 'pipe' / 'third'} "
                                                 rf"is in the pipeline folder .* in use by "
                                                 rf"process {holder.pid}"):
            train(load_config(None, [f"run.dir={tmp_path / 'pipe'}", "run.name=third", *TINY]))
        assert not (tmp_path / "pipe" / "third").exists()
    finally:
        holder.kill()
        holder.wait()
    train(load_config(None, [f"run.dir={tmp_path / 'pipe'}", "run.name=third", *TINY]))
