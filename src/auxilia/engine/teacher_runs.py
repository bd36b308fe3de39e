"""A teacher run and its students: a run is never its own teacher, and a teacher run that an
unfinished student distils is not overwritten under it.

When a student starts, it records itself, best effort, in its teacher run's folder:
``students/<student name>-<hash of its path>.json`` holding the student's folder, the
``teacher.run`` it was given and the working directory that path is relative to (written
atomically; a teacher folder that cannot be written never stops the student). ``--overwrite``
of the teacher reads these records and refuses while a recorded student is unfinished: its
folder still exists, its config still names this teacher (or names a path where nothing is
now: this folder moved away from there, and the record here is the evidence), and it has no
summary of all its steps (what pipelines and sweeps skip as finished:
:func:`~auxilia.engine.runstatus.folder_status`).

:func:`load_teacher_checkpoint` reads the checkpoint ``teacher.run`` names, refusing what is
not one (nothing there, a sweep or pipeline folder, an exported model) in ``teacher.run``'s
terms.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from auxilia import jsonio
from auxilia.atomic_files import atomic_write
from auxilia.config import ConfigError, load_config
from auxilia.engine.checkpoint import (
    CheckpointError,
    for_example,
    is_torchscript,
    load_checkpoint,
    resolve_checkpoint,
    run_folder_of_checkpoint,
    runs_folder,
)
from auxilia.engine.runfolder import STUDENTS, RunFolder, RunFolderError, is_run_folder
from auxilia.engine.runstatus import folder_status
from auxilia.teachers import TeacherConfig

__all__ = ["check_no_unfinished_students", "check_not_own_teacher", "load_teacher_checkpoint",
           "record_student", "unfinished_students"]


def teacher_path(run: str, cwd: str | Path | None = None) -> Path:
    """``teacher.run`` as an absolute path with every link resolved (relative to ``cwd``)."""
    return (Path(cwd or Path.cwd()) / Path(run).expanduser()).resolve()


def teacher_folder(run: str, cwd: str | Path | None = None) -> Path | None:
    """The run folder ``teacher.run`` names: itself, or the folder of ``RUN/checkpoints/*.pt``;
    None for a checkpoint file outside a run folder."""
    path = teacher_path(run, cwd)
    return path if path.is_dir() else run_folder_of_checkpoint(path)


def load_teacher_checkpoint(cfg: TeacherConfig) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``teacher.run`` names (a run folder's ``checkpoints/<teacher.checkpoint>.pt``
    or a checkpoint file), loaded.

    Raises:
        CheckpointError: nothing there (saying relative to which working directory), no such
            checkpoint, an exported model or an unreadable file; naming ``teacher.run`` and the
            fix.
        ConfigError: a sweep or pipeline folder (naming one of its runs).
    """
    given = str(cfg.run)
    path = Path(given).expanduser()
    if not path.exists():
        raise CheckpointError(f"teacher.run={given}{_relative(path)}: no run folder or "
                              f"checkpoint there; {_missing_fix(path)}")
    found = runs_folder(path) if path.is_dir() else None
    if found is not None:
        raise ConfigError(f"teacher.run={given} is a {found[0]} folder, not a run folder: set "
                          f"teacher.run to one of its runs{for_example(found[1], 'teacher.run=')}")
    try:
        checkpoint = resolve_checkpoint(path, cfg.checkpoint,  # type: ignore[arg-type]
                                        advice="set teacher.checkpoint={which} to distil {path}")
        return checkpoint, load_checkpoint(checkpoint)
    except CheckpointError as err:
        exported = _exported(path)
        if exported is None:
            raise CheckpointError(f"teacher.run={given}: {err}") from None
    raise CheckpointError(f"teacher.run={given} is {exported}, not a training checkpoint: set "
                          "teacher.run to the run folder it was exported from (or its "
                          "checkpoints/best.pt)")


def _relative(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"


def _missing_fix(path: Path) -> str:
    where = f"a resumed student needs its teacher at {path.absolute()}"
    if path.is_absolute():
        return f"set teacher.run to an existing run folder or checkpoint ({where})"
    return ("run from the directory the student started in, or set teacher.run to an existing "
            f"run folder or checkpoint ({where})")


def _exported(path: Path) -> str | None:
    """What exported model ``path`` is (``auxilia export``'s formats), or None."""
    if path.suffix == ".onnx":
        return "an exported ONNX model"
    if path.suffix == ".safetensors":
        return "an exported state_dict (safetensors; teacher.model with teacher.weights reads it)"
    return "an exported TorchScript model" if is_torchscript(path) else None


def check_not_own_teacher(cfg: TeacherConfig | None, run_dir: Path) -> None:
    """Refuse a ``teacher.run`` (or ``teacher.weights``) that is the run's own folder or a
    checkpoint inside it, however spelled (relative, absolute, through a link, with a trailing
    slash).

    Raises:
        ConfigError: naming the key, the run folder and the fix.
    """
    if cfg is None:
        return
    own = run_dir.resolve()
    for key, given in (("teacher.run", cfg.run), ("teacher.weights", cfg.weights)):
        teacher = teacher_path(given) if given is not None else None
        if teacher is None or (teacher != own and own not in teacher.parents):
            continue
        where = "" if teacher == own else f" ({teacher.relative_to(own)} in it)"
        raise ConfigError(
            f"{key}={given!r} is this run's own folder {run_dir}{where}: a run cannot distil "
            "itself (its checkpoints change as it trains, or are replaced); set "
            f"{key} to another run's, or set run.name for this one")


def record_student(cfg: TeacherConfig | None, student: Path) -> None:
    """Record ``student`` in its teacher run's folder (best effort: never raises)."""
    if cfg is None or cfg.run is None:
        return
    try:
        folder = teacher_folder(cfg.run)
        if folder is None or not is_run_folder(folder):
            return  # a loose checkpoint, or a folder auxilia does not own: nothing is written
        path = student.resolve()
        record = {"student": str(path), "teacher_run": cfg.run, "cwd": os.getcwd()}
        text = jsonio.dumps(record, indent=2).encode()
        (folder / STUDENTS).mkdir(exist_ok=True)
        atomic_write(folder / STUDENTS / f"{path.name}-{_digest(path)}.json",
                     lambda f: f.write(text))
    except (OSError, RuntimeError):
        pass  # a read-only or full teacher folder: the guard is lost, the student trains


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def unfinished_students(teacher: Path) -> list[Path]:
    """The recorded students of the run folder ``teacher`` that still distil it, unfinished."""
    return [student for student, _moved in _unfinished_records(teacher)]


def _unfinished_records(teacher: Path) -> list[tuple[Path, Path | None]]:
    """``(student, where its teacher.run points when this folder moved away from there)``."""
    folder = teacher / STUDENTS
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.glob("*.json")):
        record = _read(entry)
        state = _unfinished(record, teacher.resolve()) if record is not None else False
        if record is not None and state is not False:
            found.append((Path(record["student"]), state))
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = ("student", "teacher_run", "cwd")
    ok = isinstance(record, dict) and all(isinstance(record.get(k), str) for k in fields)
    return record if ok else None


def _unfinished(record: dict[str, Any], teacher: Path) -> bool | Path | None:
    """Whether the recorded student still exists, still names ``teacher``, and is unfinished:
    False, or None (it names this folder), or the path its ``teacher.run`` names, where
    nothing is now (this folder moved away from there: the record here is the evidence)."""
    student = RunFolder(record["student"])
    if not student.config.is_file():
        return False  # moved or deleted: it no longer depends on this folder
    try:
        config = load_config(student.config)
    except (ConfigError, OSError):
        return False  # not a config this auxilia reads: it cannot resume either
    if config.teacher is None or config.teacher.run is None:
        return False
    # the student's teacher.run is relative to the directory it was started from
    named = teacher_path(config.teacher.run, record["cwd"])
    if named.exists() and teacher_folder(config.teacher.run, record["cwd"]) != teacher:
        return False  # it distils another run now
    if folder_status(config, student) == "skipped":
        return False  # finished
    return None if named.exists() else named


def check_no_unfinished_students(teacher: Path) -> None:
    """Refuse to overwrite a teacher run that an unfinished student distils.

    Raises:
        RunFolderError: naming the student and the fix.
    """
    students = _unfinished_records(teacher)
    if not students:
        return
    (student, moved), more = students[0], len(students) - 1
    others = f" (and {more} more)" if more else ""
    back = (f" (its teacher.run names {moved}: move this folder back there first)"
            if moved is not None else "")
    raise RunFolderError(
        f"--overwrite refuses to replace {teacher}: it is the teacher of the unfinished run "
        f"{student}{others}, which could then not resume; finish it first{back} (auxilia "
        f"train --resume {student}), or delete it")
