"""A teacher has an identity: its class names are the student's (or paired explicitly), its
weights are those of the student's first start, it is never the run itself, and it is not
overwritten under an unfinished student."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_distillation import TINY, Recorder, _interrupt_at, _student

from auxilia.cli import main as cli
from auxilia.config import ConfigError, load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from auxilia.engine.runfolder import RunFolderError, foreign_entries
from auxilia.engine.setup import build_setup
from auxilia.engine.teacher_classes import class_index, class_note
from auxilia.engine.teacher_runs import unfinished_students
from auxilia.teachers import weights_checksum

SHORT = ["train.steps=4", "train.eval_every=4", "data.batch_size=16",
         "model.kwargs={widths: [8, 16, 32]}"]


def _short(runs: Path, name: str, method: str, *extra: str):
    """The distillation tests' tiny student, cut to 4 steps and one evaluation."""
    return _student(runs, name, method, *SHORT, *extra)


def _write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _folder_data(root: Path, classes: tuple[str, ...], seed: int) -> Path:
    """Class folders of random 8x8 images (train/val/test), different images per seed."""
    for s, (split, n) in enumerate((("train", 8), ("val", 3), ("test", 3))):
        for c, name in enumerate(classes):
            for i in range(n):
                _write(root / split / name / f"{i}.png", seed * 10_000 + 1000 * c + 100 * s + i)
    return root


def _folder_run(runs: Path, root: Path, name: str, *extra: str):
    return load_config(None, [*TINY, *SHORT, f"run.dir={runs}", f"run.name={name}",
                              "data.source=folder", f"data.root={root}", "data.batch_size=8",
                              *extra])


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A teacher run trained on classes c0, c1, c3, and the student's data: c0, c1, c2."""
    base = tmp_path_factory.mktemp("classes")
    teacher_data = _folder_data(base / "teacher-data", ("c0", "c1", "c3"), seed=1)
    student_data = _folder_data(base / "student-data", ("c0", "c1", "c2"), seed=2)
    teacher = train(_folder_run(base / "runs", teacher_data, "t")).run_dir
    return teacher, student_data


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("digits") / "runs"
    return train(load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=teacher"])
                 ).run_dir


def _teacher_logits(config, x: torch.Tensor | None = None, **kw) -> tuple[torch.Tensor, dict]:
    setup = build_setup(config, **kw)
    slot = setup.objective.slots["teacher"]
    x = setup.eval_view(setup.data.test.images[:8]) if x is None else x
    return slot.model(x)["final"]["logits"], {"setup": setup, "x": x, "slot": slot}


# ----------------------------------------------------------------------------- class names


def test_a_teacher_trained_on_other_class_names_is_refused_naming_both_lists(
        other_classes: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    teacher, data = other_classes
    config = _folder_run(tmp_path, data, "s", "method=kd", f"teacher.run={teacher}")
    with pytest.raises(ConfigError, match=r"the teacher's classes are c0, c1, c3, the "
                                          r"student's c0, c1, c2; .*teacher.classes=\{c2: c3\}"):
        build_setup(config)
    overrides = [*TINY, *SHORT, f"run.dir={tmp_path}", "run.name=s", "data.source=folder",
                 f"data.root={data}", "data.batch_size=8", "method=kd", f"teacher.run={teacher}"]
    capsys.readouterr()
    assert cli(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "c0, c1, c3" in err
    assert not (tmp_path / "s").exists()


def test_teacher_classes_pairs_differing_names_inside_the_teachers_slot(
        other_classes: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, data = other_classes
    plain = _folder_run(tmp_path, data, "p", "method=kd", f"teacher.run={teacher}",
                        "teacher.classes={c2: c3}")  # c3 is the teacher's third class already
    raw, got = _teacher_logits(plain)
    assert got["slot"].class_note == "student <- teacher: c2 <- c3"
    swapped = _folder_run(tmp_path, data, "m", "method=kd", f"teacher.run={teacher}",
                          "teacher.classes={c0: c3, c2: c0}")
    logits, _ = _teacher_logits(swapped, got["x"])
    # student c0 is taught by the teacher's c3 (its logit 2), c1 by c1, c2 by the teacher's c0
    assert torch.equal(logits, raw[:, [2, 1, 0]])
    result = train(_folder_run(tmp_path, data, "s", "method=kd", f"teacher.run={teacher}",
                               "teacher.classes={c2: c3}"))
    assert result.summary["teacher"]["classes"] == "student <- teacher: c2 <- c3"
    assert result.summary["teacher"]["unchanged"]


@pytest.mark.parametrize(("pairs", "message"), [
    ("{c9: c3}", "teacher.classes pairs 'c9', which is not a class of the student"),
    ("{c2: c7}", "pairs student class 'c2' with 'c7', which is not a class of the teacher"),
    ("{c2: c1}", "student classes 'c1' and 'c2' both pair with the teacher's class 'c1'"),
    ("{c0: c3}", "student class 'c2' has no class in the teacher"),
    ("[c0, c1, c3]", "teacher.run .* records its own .*give a mapping"),
])
def test_a_pairing_that_does_not_pair_every_class_once_is_refused(
        pairs: str, message: str, other_classes: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, data = other_classes
    config = _folder_run(tmp_path, data, "s", "method=kd", f"teacher.run={teacher}",
                         f"teacher.classes={pairs}")
    with pytest.raises(ConfigError, match=message):
        build_setup(config)


def test_long_class_lists_name_the_differences_and_a_mapping_may_drop_teacher_classes(
        ) -> None:
    student = [f"c{i}" for i in range(20)]
    with pytest.raises(ConfigError, match=r"the student's c19 are not the teacher's, the "
                                          r"teacher's x are not the student's; .*\{c19: x\}"):
        class_index(student, [*student[:19], "x"], None, "run T")
    wider = [*student, "c20", "c21"]
    with pytest.raises(ConfigError, match=r"the teacher's c20, c21 are not the student's"):
        class_index(student, wider, None, "run T")
    index = class_index(student, list(reversed(wider)), {"c0": "c0"}, "run T")
    assert index == [21 - i for i in range(20)]
    assert class_note(student, list(reversed(wider)), index) == (
        "reordered to the student's classes; teacher classes dropped: c21, c20")


def test_teacher_classes_is_checked_as_names() -> None:
    assert load_config(None, ["teacher.classes={2: 3}"]).teacher.classes == {"2": "3"}
    assert load_config(None, ["teacher.classes=[1, b]"]).teacher.classes == ["1", "b"]
    for bad, message in (("{a: c, b: c}", "two student classes pair with teacher class 'c'"),
                         ("[a, a]", "the list names class 'a' twice"), ("{}", "expected a"),
                         ("{a: [b]}", "class names are text"), ("7", "expected a"),
                         # two spellings of one name: refused, never the last silently winning
                         ('{1: 2, "1": 1}', r"student class '1' is given twice \(as 1 and '1'\)"),
                         ('{a: 1, b: "1"}', r"two student classes pair with teacher class '1' "
                                            r"\(as 1 and '1'\)"),
                         ('[3, "3"]', r"the list names class '3' twice \(as 3 and '3'\)")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"teacher.classes={bad}"])


SUGGESTED = re.compile(r"teacher\.classes=(\[[^\]]*\]|\{[^}]*\})")
"""A value a class message tells the user to give teacher.classes."""


def _follow(student: list[str], teacher: list[str], pairs: dict[str, str] | None,
            declared: bool) -> tuple[list[int] | None, int]:
    """class_index after following each message's teacher.classes=..., as a user would (the
    value read as the command line reads it); the index and how many fixes it took."""
    for fixes in range(4):
        try:
            return class_index(student, teacher, pairs, "T", declared), fixes
        except ConfigError as err:
            found = SUGGESTED.search(str(err))
            if found is None:
                raise
            value = load_config(None, [f"teacher.classes={found[1]}"]).teacher.classes
            # a teacher whose names are a declared list takes no mapping, a named one no list
            assert isinstance(value, list) == declared, str(err)
            teacher, pairs = (value, None) if isinstance(value, list) else (teacher, value)
    raise AssertionError("still refused after 3 fixes")


@pytest.mark.parametrize(("student", "teacher", "pairs", "declared", "outcome"), [
    (["airplane", "cat", "dog"], ["dog", "cat", "frog"], None, True, [2, 1, 0]),
    (["airplane", "cat", "dog"], ["dog", "cat", "frog"], None, False, [2, 1, 0]),
    (["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"], None, False, None),
    (["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"], None, True, None),
    (["007", "true", "cat"], ["cat", "dog", "1.5"], None, True, [1, 2, 0]),
    (["c0", "c1", "c2"], ["c0", "c1", "c3"], {"c0": "c3"}, False, [2, 1, 0]),
    (["c0", "c1"], ["c0", "c1", "c3", "c4"], None, False, [0, 1]),
    (["c0", "c1", "c2"], ["c0", "c1", "c3", "c4"], None, False, [0, 1, 2]),
    # no pairing works: the message gives no teacher.classes to follow
    (["c0", "c1"], ["c0", "c1", "c3"], None, True, "which a list of its names in "
                                                  "teacher.classes cannot drop: distil a"),
    (["a", "b", "c"], ["a", "x"], None, False, "it has 2 classes for the student's 3, so no"),
    (["a", "b", "c"], ["a", "x"], {"a": "a"}, False, "2 student classes have none, and 1 of "
                                                     "the teacher's are left to pair them"),
    (["a", "b", "c"], ["a", "b"], None, True, "it has no logit for c: distil"),
])
def test_every_fix_a_class_message_spells_out_is_accepted_when_followed(
        student: list[str], teacher: list[str], pairs: dict[str, str] | None, declared: bool,
        outcome: list[int] | str | None) -> None:
    if not isinstance(outcome, str):
        assert _follow(student, teacher, pairs, declared) == (outcome, 1)
        return
    with pytest.raises(ConfigError, match=outcome) as err:
        _follow(student, teacher, pairs, declared)
    assert "teacher.classes=" not in str(err.value)


def test_a_declared_list_of_names_is_corrected_as_a_list_that_is_then_accepted(
        tmp_path: Path) -> None:
    module = Recorder()
    names = [*map(str, range(9)), "nine"]  # the teacher's last logit named otherwise
    with pytest.raises(ConfigError, match=r"name them as the student does: teacher\.classes="
                                          r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]") as err:
        build_setup(_short(tmp_path, "a", "kd", f"teacher.classes=[{', '.join(names)}]"),
                    teacher=module)
    advice = SUGGESTED.search(str(err.value))
    assert advice is not None and "{" not in str(err.value).split("; its logits")[1]
    followed = _short(tmp_path, "b", "kd", f"teacher.classes={advice[1]}")
    x = torch.rand(4, 1, 8, 8)
    logits, _ = _teacher_logits(followed, x, teacher=module)
    assert torch.equal(logits, module.eval()(x))


def test_a_teacher_with_the_students_classes_in_another_order_is_reordered(
        digits_teacher: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(digits_teacher / "checkpoints" / "best.pt")
    order = [3, 0, 9, 1, 8, 2, 7, 4, 6, 5]  # the new teacher's logit i is the old one's order[i]
    for key in ("classifier.weight", "classifier.bias"):
        checkpoint["model"][key] = checkpoint["model"][key][order].clone()
    checkpoint["data"]["classes"] = [checkpoint["data"]["classes"][i] for i in order]
    shuffled = tmp_path / "shuffled.pt"
    save_checkpoint(checkpoint, shuffled)
    want, got = _teacher_logits(_short(tmp_path, "a", "kd", f"teacher.run={digits_teacher}"))
    logits, more = _teacher_logits(_short(tmp_path, "b", "kd", f"teacher.run={shuffled}"),
                                   got["x"])
    assert torch.allclose(logits, want, atol=1e-6)
    assert more["slot"].class_note == "reordered to the student's classes"


def test_a_teacher_without_class_names_keeps_the_count_check_and_may_declare_them(
        tmp_path: Path) -> None:
    module = Recorder()
    x = torch.rand(4, 1, 8, 8)
    declared = _short(tmp_path, "d", "kd", f"teacher.classes={list(range(9, -1, -1))}")
    logits, _ = _teacher_logits(declared, x, teacher=module)
    assert torch.equal(logits, module.eval()(x).flip(-1))
    with pytest.raises(ValueError, match="logits have 3 classes and the data has 10"):
        build_setup(_short(tmp_path, "n", "kd"), teacher=Recorder(classes=3))
    with pytest.raises(ConfigError, match="records no class names: give them as a list"):
        build_setup(_short(tmp_path, "m", "kd", "teacher.classes={0: 1}"), teacher=module)
    with pytest.raises(ConfigError, match="lists 3 class names, and the teacher .* gives 10"):
        build_setup(_short(tmp_path, "l", "kd", "teacher.classes=[0, 1, 2]"), teacher=module)


# ----------------------------------------------------------------------------- weights


def _stopped_student(runs: Path, teacher: Path, name: str = "s"):
    config = _short(runs, name, "kd", f"teacher.run={teacher}")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_interrupt_at(2)])
    return config


def test_resume_refuses_a_retrained_teacher_and_the_summary_compares_with_the_first_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    teacher_config = load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=t"])
    teacher = train(teacher_config).run_dir
    first = weights_checksum(build_setup(_short(runs, "x", "kd", f"teacher.run={teacher}"))
                             .objective.slots["teacher"].model)
    config = _stopped_student(runs, teacher)
    last = runs / "s" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["teacher"]["sha256"] == first
    shutil.copytree(teacher, tmp_path / "kept")
    shutil.rmtree(teacher)  # retrained: same folder, other weights
    train(load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=t", "seed=1"]))
    stamp = last.stat().st_mtime_ns
    with pytest.raises(ConfigError, match=rf"teacher \(run .*\) has other weights than at the "
                                          rf"run's first start \(sha256 {first[:12]} then, "):
        train(config, resume=True)
    capsys.readouterr()
    assert cli(["train", "--resume", str(runs / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and first[:12] in err and str(teacher) in err
    assert last.stat().st_mtime_ns == stamp
    shutil.rmtree(teacher)
    shutil.copytree(tmp_path / "kept", teacher)  # the teacher it started with: resumes
    report = train(config, resume=True).summary["teacher"]
    assert report["sha256"] == first and report["sha256_end"] == first and report["unchanged"]


# ----------------------------------------------------------------------------- its own run


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("own") / "runs"
    return train(load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=s"])).run_dir


def _listing(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.parent.rglob("*"))}


@pytest.mark.parametrize("spelling", ["absolute", "relative", "slash", "link", "checkpoint",
                                      "dots", "weights"])
def test_a_run_cannot_be_its_own_teacher(spelling: str, own_run: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(own_run.parent)
    link = tmp_path / "link"
    link.symlink_to(own_run)
    given = {"absolute": str(own_run), "relative": "s", "slash": f"{own_run}/",
             "link": str(link), "checkpoint": "s/checkpoints/best.pt",
             "dots": f"../{own_run.parent.name}/./s", "weights": "s/checkpoints/last.pt"
             }[spelling]
    key = "teacher.weights" if spelling == "weights" else "teacher.run"
    extra = ["teacher.model=small_cnn"] if spelling == "weights" else []
    config = _short(own_run.parent, "s", "kd", f"{key}={given}", *extra)
    before = _listing(own_run)
    for kwargs in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match=rf"{key}=.* is this run's own folder .*: a run "
                                              r"cannot distil itself"):
            train(config, **kwargs)
    assert _listing(own_run) == before  # nothing written, not even a lock file


def test_a_new_run_naming_its_future_folder_as_teacher_writes_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="own folder"):
        train(_short(runs, "new", "kd", f"teacher.run={runs / 'new'}"))
    assert not runs.exists()


# ----------------------------------------------------------------------------- its students


def test_overwriting_a_teacher_that_an_unfinished_student_distils_is_refused(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    teacher_config = load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=t"])
    teacher = train(teacher_config).run_dir
    config = _stopped_student(runs, teacher)
    records = list((teacher / "students").iterdir())
    assert [p.suffix for p in records] == [".json"] and foreign_entries(teacher) == []
    assert json.loads(records[0].read_text())["student"] == str((runs / "s").resolve())
    stamp = (teacher / "checkpoints" / "best.pt").stat().st_mtime_ns
    student = re.escape(str(runs.resolve() / "s"))
    with pytest.raises(RunFolderError, match=rf"--overwrite refuses to replace "
                                             rf"{re.escape(str(teacher))}: it is the teacher of "
                                             rf"the unfinished run {student}"):
        train(teacher_config, overwrite=True)
    assert (teacher / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp
    train(config, resume=True)  # finished: it no longer needs its teacher
    assert train(teacher_config, overwrite=True).run_dir == teacher


def test_a_student_that_is_gone_or_names_another_teacher_does_not_block(
        digits_teacher: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _stopped_student(runs, digits_teacher, "gone")
    _stopped_student(runs, digits_teacher, "other")
    assert set(unfinished_students(digits_teacher)) >= {(runs / n).resolve()
                                                         for n in ("gone", "other")}
    shutil.rmtree(runs / "gone")
    with pytest.raises(KeyboardInterrupt):  # "other" is now an unfinished run without teacher
        train(_short(runs, "other", "supervised"), overwrite=True,
              callbacks=[_interrupt_at(2)])
    left = set(unfinished_students(digits_teacher))
    assert not left & {(runs / n).resolve() for n in ("gone", "other")}


def test_a_teacher_folder_that_cannot_be_written_never_fails_the_student(
        digits_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(path: Path, write: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("auxilia.engine.teacher_runs.atomic_write", read_only)
    result = train(_short(tmp_path, "ro", "kd", f"teacher.run={digits_teacher}"))
    assert result.summary["steps"] == 4
    records = digits_teacher / "students"
    assert not any(p.name.startswith("ro-") for p in records.glob("*"))


# ----------------------------------------------------------------------------- messages


def test_a_teacher_run_without_best_pt_advises_teacher_checkpoint_last(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):  # stopped before its first evaluation
        train(load_config(None, [*TINY, *SHORT, f"run.dir={runs}", "run.name=t"]),
              callbacks=[_interrupt_at(1)])
    teacher = runs / "t"
    assert not (teacher / "checkpoints" / "best.pt").exists()
    with pytest.raises(CheckpointError, match=r"no checkpoints/best\.pt: .*; set "
                                              r"teacher\.checkpoint=last to distil ") as err:
        build_setup(_short(tmp_path, "s", "kd", f"teacher.run={teacher}"))
    assert "--checkpoint" not in str(err.value)
    with pytest.raises(CheckpointError, match="use --checkpoint last for"):  # eval's, as before
        resolve_checkpoint(teacher)
    build_setup(_short(tmp_path, "s", "kd", f"teacher.run={teacher}", "teacher.checkpoint=last"))
