"""Where a teacher lives: a moved teacher keeps its unfinished students' protection, a
``teacher.run`` that names nothing, a sweep, a pipeline or an exported model is refused naming
the key and the fix, and eval/export of a run never need its unlabeled images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_distillation import TINY, _interrupt_at
from test_semi_runs import _png
from test_teacher_identity import SHORT, _short

from auxilia.cli import main as cli
from auxilia.config import ConfigError, load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import CheckpointError
from auxilia.engine.datacheck import DataChangedError
from auxilia.engine.export import export_run
from auxilia.engine.reload import evaluate_run
from auxilia.engine.runfolder import RunFolderError
from auxilia.engine.setup import build_setup
from auxilia.engine.teacher_runs import unfinished_students


def _teacher(runs: Path, name: str = "t1"):
    return load_config(None, [*TINY, *SHORT, f"run.dir={runs}", f"run.name={name}"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(_teacher(tmp_path_factory.mktemp("paths") / "runs", "teacher")).run_dir


# ----------------------------------------------------------------------------- moved


def test_a_moved_teacher_still_blocks_its_overwrite_until_its_path_names_another_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")
    train(_teacher(runs))
    student = _short(runs, "su", "kd", "teacher.run=runs/t1/checkpoints/best.pt")
    with pytest.raises(KeyboardInterrupt):
        train(student, callbacks=[_interrupt_at(2)])
    (runs / "t1").rename(runs / "t1moved")
    moved = (runs / "t1moved").resolve()
    assert unfinished_students(moved) == [(runs / "su").resolve()]
    stamp = (moved / "checkpoints" / "best.pt").stat().st_mtime_ns
    with pytest.raises(RunFolderError, match=rf"--overwrite refuses to replace .*t1moved: it is "
                                             rf"the teacher of the unfinished run "
                                             rf"{re.escape(str((runs / 'su').resolve()))}.*move "
                                             r"this folder back there"):
        train(_teacher(runs, "t1moved"), overwrite=True)
    assert (moved / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp
    # resumed from another directory, the relative teacher.run names the directory it is read in
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli(["train", "--resume", str(tmp_path / "runs" / "su")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"error: teacher.run=runs/t1/checkpoints/best.pt (relative to the working directory "
        f"{elsewhere}): no run folder or checkpoint there; run from the directory the student "
        "started in")
    # once teacher.run resolves to another run, the student no longer needs this folder
    monkeypatch.chdir(tmp_path)
    shutil.copytree(runs / "t1moved", runs / "t1")
    assert unfinished_students(moved) == []
    assert train(_teacher(runs, "t1moved"), overwrite=True).run_dir.resolve() == moved


# ----------------------------------------------------------------------------- messages


def test_a_missing_teacher_run_names_the_key_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^teacher\.run=runs/nope \(relative to the "
                                              rf"working directory {re.escape(str(tmp_path))}\): "
                                              r"no run folder or checkpoint there; run from the "
                                              r"directory the student started in, or set "
                                              r"teacher\.run to an existing run folder"):
        build_setup(_short(tmp_path, "s", "kd", "teacher.run=runs/nope"))
    gone = tmp_path / "gone"
    with pytest.raises(CheckpointError, match=rf"^teacher\.run={re.escape(str(gone))}: no run "
                                              r"folder or checkpoint there; set teacher\.run to"):
        build_setup(_short(tmp_path, "s", "kd", f"teacher.run={gone}"))


@pytest.mark.parametrize("kind", ["sweep", "pipeline"])
def test_a_sweep_or_pipeline_folder_as_teacher_or_evaluated_names_one_of_its_runs(
        kind: str, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / kind
    folder.mkdir()
    (folder / f".auxilia-{kind}").write_text("{}\n")
    run = folder / "kd" / "seed0"
    shutil.copytree(teacher, run)
    with pytest.raises(ConfigError, match=rf"^teacher\.run={re.escape(str(folder))} is a {kind} "
                                          r"folder, not a run folder: set teacher\.run to one of "
                                          rf"its runs, e\.g\. teacher\.run={re.escape(str(run))}$"):
        build_setup(_short(tmp_path, "s", "kd", f"teacher.run={folder}"))
    capsys.readouterr()
    assert cli(["eval", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is a {kind} folder, not a run folder" in err and str(run) in err


def test_an_exported_model_as_teacher_is_named_without_eval_advice(
        teacher: Path, tmp_path: Path) -> None:
    model = export_run(teacher, "torchscript", tmp_path / "model.pt").path
    with pytest.raises(CheckpointError, match=rf"^teacher\.run={re.escape(str(model))} is an "
                                              r"exported TorchScript model, not a training "
                                              r"checkpoint: set teacher\.run to the run folder "
                                              r"it was exported from") as err:
        build_setup(_short(tmp_path, "s", "kd", f"teacher.run={model}"))
    assert "auxilia eval" not in str(err.value) and "--checkpoint" not in str(err.value)


# ----------------------------------------------------------------------------- unlabeled


def test_eval_and_export_never_need_the_unlabeled_folder_and_still_check_labeled_data(
        tmp_path: Path) -> None:
    root, extra = tmp_path / "pets", tmp_path / "extra"
    for c, name in enumerate(("ant", "bee", "cat")):
        for i in range(8):
            _png(root / "train" / name / f"{i}.png", 100 * c + i)
        for i in range(3):
            _png(root / "test" / name / f"{i}.png", 5000 + 100 * c + i)
    for i in range(6):
        _png(extra / f"u{i}.png", 9000 + i)
    config = load_config(None, [*TINY, "train.steps=4", "train.eval_every=4",
                                f"run.dir={tmp_path / 'runs'}", "run.name=fm",
                                "data.source=folder", f"data.root={root}",
                                f"data.unlabeled={extra}", "data.batch_size=8",
                                "method={name: fixmatch, mu: 1}"])
    run = train(config).run_dir
    shutil.rmtree(extra)
    results, _ = evaluate_run(run)
    assert set(results) == {"val", "test"}
    assert export_run(run, "state_dict", tmp_path / "out").path.is_file()
    _png(root / "train" / "ant" / "0.png", 7777)  # the labeled data changed: still refused
    with pytest.raises(DataChangedError, match="cannot load this run: the data differs"):
        evaluate_run(run)
