"""Rounds: a pipeline of ordinary runs, each in its own folder, resumable round by round."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from auxilia.cli import main as cli
from auxilia.config import Config, load_config
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.rounds import (
    Pipeline,
    Round,
    RoundResult,
    RoundsError,
    load_pipeline,
    plan_pipeline,
    run_pipeline,
)
from auxilia.engine.setup import build_setup

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "data.batch_size=32",
        "train.steps=8", "train.eval_every=4"]
ROUNDS = (Round("first"), Round("second", ("model.weights={first}/checkpoints/best.pt",
                                           "optim.lr=0.02")))


def _base(runs: Path) -> Config:
    return load_config(None, [f"run.dir={runs}", *TINY])


def _pipeline(runs: Path, name: str = "pipe", rounds: tuple[Round, ...] = ROUNDS) -> Pipeline:
    return Pipeline(name, _base(runs), rounds)


def _counter(counts: dict[str, int], name: str):
    def callback(step: int, losses: dict) -> None:
        counts[name] = counts.get(name, 0) + 1
    return callback


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RoundResult]]:
    """The two-round pipeline, trained once for the whole module."""
    runs = tmp_path_factory.mktemp("rounds") / "runs"
    return runs, run_pipeline(_pipeline(runs))


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_each_round_has_its_folder_and_starts_from_the_earlier_best(finished) -> None:
    runs, results = finished
    first, second = runs / "pipe" / "first", runs / "pipe" / "second"
    assert [(r.name, r.status, r.run_dir) for r in results] == [
        ("first", "trained", first), ("second", "trained", second)]
    for folder in (first, second):
        assert (folder / "summary.json").is_file()
        assert (folder / "checkpoints" / "best.pt").is_file()
    assert results[1].val_top1 is not None and results[1].test_top1 is not None
    config = plan_pipeline(_pipeline(runs))[1].config
    assert config.model.weights == f"{first}/checkpoints/best.pt"
    assert load_checkpoint(second / "checkpoints" / "last.pt")["config"]["model"]["weights"] \
        == config.model.weights
    best = {k.removeprefix("backbone."): v for k, v in
            _model_tensors(first / "checkpoints" / "best.pt").items()
            if k.startswith("backbone.")}
    initial = build_setup(config).model.backbone.state_dict()
    assert initial.keys() == best.keys()
    for key, value in initial.items():
        assert torch.equal(value.cpu(), best[key]), key


def test_running_again_skips_finished_rounds_without_training(finished) -> None:
    runs, trained = finished
    checkpoints = sorted((runs / "pipe").glob("*/checkpoints/*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    counts: dict[str, int] = {}
    results = run_pipeline(_pipeline(runs), callbacks={
        "first": [_counter(counts, "first")], "second": [_counter(counts, "second")]})
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert counts == {}
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes
    assert [r.summary for r in results] == [r.summary for r in trained]
    assert [r.test_top1 for r in results] == [r.test_top1 for r in trained]


def _interrupt_at(step: int):
    def callback(current: int, losses: dict) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def test_an_interrupted_pipeline_continues_to_the_same_weights(finished) -> None:
    runs, _ = finished
    pipeline = _pipeline(runs, "broken")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipeline, callbacks={"second": [_interrupt_at(6)]})
    second = runs / "broken" / "second"
    assert load_checkpoint(second / "checkpoints" / "last.pt")["loop"]["step"] == 6
    assert not (second / "summary.json").exists()
    counts: dict[str, int] = {}
    results = run_pipeline(pipeline, callbacks={"first": [_counter(counts, "first")],
                                                "second": [_counter(counts, "second")]})
    assert [r.status for r in results] == ["skipped", "resumed"]
    assert counts == {"second": 2}
    for name in ("best.pt", "last.pt"):
        straight = _model_tensors(runs / "pipe" / "second" / "checkpoints" / name)
        resumed = _model_tensors(second / "checkpoints" / name)
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            assert torch.equal(value, resumed[key]), (name, key)


@pytest.mark.parametrize(("rounds", "message"), [
    ((Round("a", ("model.weights={b}/checkpoints/best.pt",)), Round("b")),
     r"round 'a': \{b\} in 'model.weights=\{b\}/checkpoints/best.pt' comes later; .*rounds "
     r"before it \(none, it is the first round\)"),
    ((Round("a"), Round("b", ("model.weights={teacher}/checkpoints/best.pt",))),
     r"round 'b': \{teacher\} .* is not a round of this pipeline; .*rounds before it \(a\)"),
    ((Round("a"), Round("b", ("model.weights={b}/x.pt",))), r"round 'b': \{b\} .* itself"),
    ((Round("a"), Round("a")), "'a' is used twice"),
    ((Round("a b"),), "round name 'a b': use letters"),
    ((Round("a", ("run.name=x",)),), "round 'a': 'run.name=x': the round's name is its run.name"),
    ((Round("a", ("optim.lrr=0.1",)),), r"round 'a': invalid configuration:\n  optim.lrr: "
                                         r"unknown key \(did you mean 'lr'\?\)"),
])
def test_bad_references_and_names_are_refused_before_training(
        tmp_path: Path, rounds: tuple[Round, ...], message: str) -> None:
    with pytest.raises(RoundsError, match=message):
        run_pipeline(_pipeline(tmp_path / "runs", rounds=rounds))
    assert not (tmp_path / "runs").exists()


def test_unknown_keys_in_a_pipeline_file_are_named(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: p\nbse: base.yaml\nrounds:\n  - name: a\n    overide: [x=1]\n")
    with pytest.raises(RoundsError) as err:
        load_pipeline(path)
    text = str(err.value)
    assert "bse: unknown key (did you mean 'base'?)" in text
    assert "rounds[0].overide: unknown key (did you mean 'overrides'?)" in text


def test_a_finished_round_of_another_config_is_refused(finished) -> None:
    runs, _ = finished
    rounds = (ROUNDS[0], Round("second", (*ROUNDS[1].overrides, "optim.lr=0.03")))
    with pytest.raises(RoundsError, match=r"round 'second': .* another config:\n  optim.lr: "
                                          r"the run has 0.02, the round gives 0.03"):
        plan_pipeline(_pipeline(runs, rounds=rounds))


def test_a_round_made_from_a_round_to_be_retrained_is_refused(finished) -> None:
    runs, _ = finished
    shutil.copytree(runs / "pipe" / "second", runs / "stale" / "second")
    with pytest.raises(RoundsError, match=r"round 'second': .* made from round 'first', which "
                                          r"has no finished run"):
        plan_pipeline(_pipeline(runs, "stale"))


def test_cli_runs_a_pipeline_file_and_prints_a_line_per_round(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("train: {steps: 4}\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: cli\nbase: configs/base.yaml\noverrides: [train.eval_every=2]\n"
                    "rounds:\n  - name: a\n  - name: b\n"
                    "    overrides: ['model.weights={a}/checkpoints/best.pt']\n")
    items = [str(path), f"run.dir={tmp_path / 'runs'}", *TINY[:-2]]
    assert cli(["rounds", *items]) == 0
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[:2] for line in lines] == [["a", "trained"], ["b", "trained"]]
    assert lines[1].endswith(str(tmp_path / "runs" / "cli" / "b"))
    assert cli(["rounds", *items]) == 0
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[:2] for line in lines] == [["a", "skipped"], ["b", "skipped"]]


def test_the_example_pipeline_plans(tmp_path: Path) -> None:
    pipeline = load_pipeline(ROOT / "configs" / "rounds_digits_finetune.yaml",
                             [f"run.dir={tmp_path}"])
    plans = plan_pipeline(pipeline)
    assert [p.round.name for p in plans] == ["pretrain", "finetune"]
    assert plans[1].uses == ("pretrain",)
    best = tmp_path / "digits-finetune" / "pretrain" / "checkpoints" / "best.pt"
    assert plans[1].config.model.weights == str(best)
