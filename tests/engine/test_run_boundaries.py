"""Commands that read one run never write into another run's folder, and refuse arguments
that contradict each other or are not numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import train

TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "train.steps=4",
        "train.eval_every=4"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    runs = tmp_path_factory.mktemp("runs")
    a, b = (train(load_config(None, [f"run.dir={runs}", f"run.name={name}", *TINY,
                                     "method=deep_supervision"])).run_dir for name in "ab")
    return a, b


def _one_error(capsys: pytest.CaptureFixture) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


def test_eval_and_export_never_write_into_another_runs_folder(
        two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    a, b = two_runs
    assert cli(["eval", str(a), "--split", "test"]) == 0
    before = (a / "anytime.json").read_bytes()
    capsys.readouterr()
    assert cli(["eval", str(b), "--split", "test", "--out", str(a)]) == 2
    assert f"is inside the run folder {a.resolve()}, another run than {b}" in _one_error(capsys)
    assert (a / "anytime.json").read_bytes() == before
    for out in (a / "export" / "model.pt", a / "export/"):
        assert cli(["export", str(b), "--format", "torchscript", "--out", str(out),
                    "--overwrite"]) == 2
        assert (f"inside the run folder {a.resolve()}, another run's; export to "
                f"{b.resolve() / 'export'}/ (the default)") in _one_error(capsys)
    assert not (a / "export").exists()


def test_contradictory_or_non_numeric_arguments_are_refused(
        two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    a, _ = two_runs
    assert cli(["train", "--resume", str(a), "--overwrite"]) == 2
    assert "--resume continues a run and --overwrite replaces it" in _one_error(capsys)
    for thresholds in ("nan,inf", "0.5,,0.7", "-1"):
        with pytest.raises(SystemExit) as exited:
            cli(["eval", str(a), "--thresholds", thresholds])
        assert exited.value.code == 2
        assert "--thresholds wants comma-separated numbers >= 0" in capsys.readouterr().err
