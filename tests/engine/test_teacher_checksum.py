"""One teacher checkpoint, one checksum: whatever student distils it (its slot wrapped or not to
adapt the student's size and normalisation), the same checksum is recorded and printed; another
checkpoint gives another; a run that recorded the older (wrapped) checksum still resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_distillation import _interrupt_at

from auxilia.config import Config, ConfigError, load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint, save_checkpoint
from auxilia.engine.setup import build_setup
from auxilia.teachers import InputAdapter, state_checksum, weights_checksum, wrapped_checksum

QUIET = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "train.device=cpu",
         "model.name=small_cnn", "model.kwargs={widths: [8, 16, 32]}", "data.batch_size=16",
         "train.steps=4", "train.eval_every=4"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two teacher runs on digits, of two seeds (other weights)."""
    runs = tmp_path_factory.mktemp("checksum") / "runs"
    return tuple(train(load_config(None, [*QUIET, f"run.dir={runs}", f"run.name=t{seed}",
                                          f"seed={seed}"])).run_dir for seed in (0, 1))


def _student(runs: Path, name: str, teacher: Path, *extra: str) -> Config:
    return load_config(None, [*QUIET, f"run.dir={runs}", f"run.name={name}", "method=kd",
                              f"teacher.run={teacher}", "train.steps=2", "train.eval_every=2",
                              *extra])


def _trained(config: Config) -> tuple[str, str, str]:
    """``(recorded in last.pt, printed in the header, in the summary)`` of a student run."""
    lines: list[str] = []
    result = train(config, header=lines.extend)
    printed = next(line for line in lines if line.startswith("teacher: "))
    recorded = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["teacher"]["sha256"]
    return recorded, printed.split("weights sha256 ")[1][:12], result.summary["teacher"]["sha256"]


def test_one_checkpoint_one_checksum_whatever_the_student(
        teachers: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, other = teachers
    same = _student(tmp_path, "a", teacher)
    # another size and another normalisation: the teacher's slot resizes and renormalises
    resized = _student(tmp_path, "b", teacher, "data.image_size=16", "data.val_fraction=0.2")
    assert not isinstance(build_setup(same).objective.slots["teacher"].model, InputAdapter)
    wrapped = build_setup(resized).objective.slots["teacher"].model
    assert isinstance(wrapped, InputAdapter)
    a, b = _trained(same), _trained(resized)
    assert a[0] == b[0] == a[2] == b[2]
    assert a[1] == b[1] == a[0][:12]
    # the checksum is of the teacher's own network, which the wrapper holds unchanged
    assert a[0] == state_checksum(wrapped.teacher) == weights_checksum(wrapped)
    assert wrapped_checksum(wrapped) != a[0]  # what older runs recorded for this student
    c = _trained(_student(tmp_path, "c", other, "data.image_size=16"))
    assert c[0] != a[0] and c[1] != a[1]


@pytest.mark.parametrize("recorded", ["wrapped", "other"])
def test_resume_accepts_the_checksum_older_runs_recorded(
        recorded: str, teachers: tuple[Path, Path], tmp_path: Path) -> None:
    config = _student(tmp_path, "s", teachers[0], "data.image_size=16")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_interrupt_at(1)])
    last = tmp_path / "s" / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    slot = build_setup(config).objective.slots["teacher"]
    # an older auxilia recorded the checksum of the wrapped slot; another teacher, another one
    old = wrapped_checksum(slot.model) if recorded == "wrapped" else "0" * 64
    checkpoint["teacher"]["sha256"] = old
    save_checkpoint(checkpoint, last)
    if recorded == "other":
        with pytest.raises(ConfigError, match=r"has other weights than at the run's first start"):
            train(config, resume=True)
        return
    result = train(config, resume=True)
    assert result.summary["teacher"]["unchanged"]
    assert result.summary["teacher"]["sha256"] == weights_checksum(slot.model)
