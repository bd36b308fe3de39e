"""Noisy Student as rounds: a teacher, a labelling round, a noised student; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auxilia.config import ConfigError, load_config
from auxilia.data.pseudo_labels import FILE_NAME, read_pseudo_labels
from auxilia.engine.batches import Batches
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.labelling import LABELS_RECORD, LabelSettings, run_labelling
from auxilia.engine.reload import evaluate_run
from auxilia.engine.rounds import (
    Pipeline,
    Round,
    RoundFailedError,
    RoundsError,
    load_pipeline,
    plan_pipeline,
    run_pipeline,
)
from auxilia.engine.runfolder import RunFolderError
from auxilia.engine.setup import build_setup
from auxilia.parts import Progress
from auxilia.teachers import weights_checksum

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "data.batch_size=32",
        "train.steps=8", "train.eval_every=4", "data.source=digits",
        "data.labels_per_class=10", "data.test_fraction=0.2", "model.name=small_cnn"]
STUDENT = ("method=[{name: noisy_student, ratio: 2}]", "data.pseudo_labels={label}/" + FILE_NAME,
           "model.drop_rate=0.5")


def _pipeline(runs: Path, label: LabelSettings | None = None) -> Pipeline:
    base = load_config(None, [f"run.dir={runs}", *TINY])
    return Pipeline("ns", base, (
        Round("teacher", ("method=supervised",)),
        # a teacher of 8 steps is sure of nothing: keep every image (the floor is tested apart)
        Round("label", ("teacher.run={teacher}",), "label",
              label or LabelSettings(min_confidence=0.0)),
        Round("student", STUDENT)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("ns") / "runs"
    return runs, run_pipeline(_pipeline(runs))


def test_the_label_round_labels_with_the_teacher_and_the_student_records_it(finished) -> None:
    runs, results = finished
    assert [r.status for r in results] == ["trained"] * 3
    folder = runs / "ns" / "label"
    assert (folder / ".auxilia-labels").is_file()
    record = json.loads((folder / LABELS_RECORD).read_text())
    teacher = load_checkpoint(runs / "ns" / "teacher" / "checkpoints" / "best.pt")
    setup = build_setup(load_config(None, [*TINY, "method=supervised"]), training=False)
    setup.model.load_state_dict(teacher["model"])
    assert record["teacher"]["sha256"] == weights_checksum(setup.model)  # the best teacher
    assert record["accuracy"]["known"] == record["unlabeled"]  # hidden labels: all known
    labels = read_pseudo_labels(folder / FILE_NAME)
    assert len(labels.keys) == record["entries"] and record["entries"] > 0
    student = load_checkpoint(runs / "ns" / "student" / "checkpoints" / "last.pt")["data"]
    assert student["pseudo_labels"]["teacher"] == record["teacher"]["sha256"]
    assert student["pseudo_labels"]["sha256"] == record["sha256"]
    assert student["splits"]["pseudo"]["count"] == record["entries"]


def test_running_again_skips_every_round_and_relabels_nothing(finished) -> None:
    runs, _ = finished
    file = runs / "ns" / "label" / FILE_NAME
    before = file.stat().st_mtime_ns
    results = run_pipeline(_pipeline(runs))
    assert [r.status for r in results] == ["skipped"] * 3
    assert results[1].summary["entries"] > 0  # the label round's record, read back
    assert file.stat().st_mtime_ns == before


def test_new_label_settings_relabel_and_a_student_of_the_old_labels_is_refused(
        finished) -> None:
    runs, _ = finished
    with pytest.raises(RoundsError, match="holds a run made from round 'label'"):
        plan_pipeline(_pipeline(runs, LabelSettings(min_confidence=0.05)))


def test_the_student_trains_on_both_streams_with_gradient_into_the_student(finished) -> None:
    runs, _ = finished
    pseudo = f"data.pseudo_labels={runs / 'ns' / 'label' / FILE_NAME}"
    config = load_config(None, [*TINY, *STUDENT[:1], pseudo, *STUDENT[2:]])
    setup = build_setup(config)
    objective = setup.objective
    assert objective.views["x_ps"] == "randaugment" and objective.views["x_lb"] == "randaugment"
    batch = Batches.build(setup).next(0)
    assert batch["x_ps"].shape[0] == 2 * batch["x_lb"].shape[0]  # ratio × labeled batch
    setup.model.train()
    outputs = {("student", key): setup.model(batch[key]) for key in ("x_lb", "x_ps")}
    losses = objective(outputs, batch, Progress(0, 8, 1))
    assert float(losses["noisy_student"]) > 0 and float(losses["ce"]) > 0
    term = objective.terms["noisy_student"].compute(outputs, batch, Progress(0, 8, 1))
    assert torch.allclose(term.detach(), losses["noisy_student"].detach())
    (grad,) = torch.autograd.grad(term, setup.model.classifier.weight)
    assert grad.abs().sum() > 0


def test_the_student_loads_for_evaluation_without_its_pseudo_label_file(
        finished, tmp_path: Path) -> None:
    runs, _ = finished
    file = runs / "ns" / "label" / FILE_NAME
    moved = tmp_path / FILE_NAME
    file.rename(moved)
    try:
        metrics, _ = evaluate_run(runs / "ns" / "student")
    finally:
        moved.rename(file)
    assert 0 <= metrics["test"]["final/top1"] <= 100


def test_a_student_without_pseudo_labels_and_a_label_round_without_teacher_are_refused(
        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set data.pseudo_labels="):
        build_setup(load_config(None, [*TINY, "method=noisy_student"]))
    with pytest.raises(ConfigError, match="labels with a teacher: set teacher.run"):
        run_labelling(load_config(None, TINY), LabelSettings(), tmp_path / "labels")


def test_a_label_round_never_writes_into_a_folder_it_did_not_make(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "ns" / "label").mkdir(parents=True)
    (runs / "ns" / "label" / "mine.txt").write_text("the user's")
    with pytest.raises(RunFolderError, match="auxilia did not make it"):
        run_pipeline(_pipeline(runs))
    assert (runs / "ns" / "label" / "mine.txt").read_text() == "the user's"


def test_the_example_pipeline_plans_and_label_settings_outside_a_label_round_are_refused(
        tmp_path: Path) -> None:
    pipeline = load_pipeline(ROOT / "configs" / "noisy_student_digits.yaml",
                             [f"run.dir={tmp_path}"])
    kinds = [r.kind for r in pipeline.rounds]
    assert kinds == ["train", "label", "train", "label", "train", "label", "train"]
    assert [p.status for p in plan_pipeline(pipeline)] == ["trained"] * 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrounds:\n  - name: a\n    label: {soft: false}\n")
    with pytest.raises(RoundsError, match="is not a label round: add kind: label"):
        load_pipeline(bad)


def test_a_failing_label_round_is_named(tmp_path: Path) -> None:
    base = load_config(None, [f"run.dir={tmp_path}", *TINY])
    pipeline = Pipeline("ns", base, (Round("label", (), "label", LabelSettings()),))
    with pytest.raises(RoundFailedError, match="round 'label'"):
        run_pipeline(pipeline)


def test_a_label_round_that_keeps_no_image_says_why(finished, tmp_path: Path) -> None:
    runs, _ = finished
    config = load_config(None, [*TINY, f"teacher.run={runs / 'ns' / 'teacher'}"])
    with pytest.raises(ConfigError, match="no unlabeled image reaches label.min_confidence=1"):
        run_labelling(config, LabelSettings(min_confidence=1.0), tmp_path / "labels")


def test_a_bad_label_setting_is_named_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrounds:\n  - name: a\n    kind: label\n    label: {per_class: 0}\n")
    with pytest.raises(RoundsError, match=r"rounds\[0\]\.label\.per_class: must be at least 1"):
        load_pipeline(bad)
