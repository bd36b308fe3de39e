"""A teacher run and its students: a run is never its own teacher, and a teacher run that an
unfinished student distils is not overwritten under it.

When a student starts, it records itself, best effort, in its teacher run's folder:
``students/<student name>-<hash of its path>.json`` holding the student's folder, the
``teacher.run`` it was given and the working directory that path is relative to (written
atomically; a teacher folder that cannot be written never stops the student). ``--overwrite``
of the teacher reads these records and refuses while a recorded student is unfinished: its
folder still exists, its config still names this teacher, and it has no summary of all its
steps (what pipelines and sweeps skip as finished:
:func:`~auxilia.engine.runstatus.folder_status`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from auxilia import jsonio
from auxilia.config import ConfigError, load_config
from auxilia.engine.checkpoint import atomic_write
from auxilia.engine.reload import run_folder_of_checkpoint
from auxilia.engine.runfolder import STUDENTS, RunFolder, RunFolderError, is_run_folder
from auxilia.engine.runstatus import folder_status
from auxilia.teachers import TeacherConfig

__all__ = ["check_no_unfinished_students", "check_not_own_teacher", "record_student",
           "unfinished_students"]


def teacher_path(run: str, cwd: str | Path | None = None) -> Path:
    """``teacher.run`` as an absolute path with every link resolved (relative to ``cwd``)."""
    return (Path(cwd or Path.cwd()) / Path(run).expanduser()).resolve()


def teacher_folder(run: str, cwd: str | Path | None = None) -> Path | None:
    """The run folder ``teacher.run`` names: itself, or the folder of ``RUN/checkpoints/*.pt``;
    None for a checkpoint file outside a run folder."""
    path = teacher_path(run, cwd)
    return path if path.is_dir() else run_folder_of_checkpoint(path)


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
    folder = teacher / STUDENTS
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.glob("*.json")):
        record = _read(entry)
        if record is not None and _unfinished(record, teacher.resolve()):
            found.append(Path(record["student"]))
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = ("student", "teacher_run", "cwd")
    ok = isinstance(record, dict) and all(isinstance(record.get(k), str) for k in fields)
    return record if ok else None


def _unfinished(record: dict[str, Any], teacher: Path) -> bool:
    """Whether the recorded student still exists, still names ``teacher``, and is unfinished."""
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
    if teacher_folder(config.teacher.run, record["cwd"]) != teacher:
        return False
    return folder_status(config, student) != "skipped"


def check_no_unfinished_students(teacher: Path) -> None:
    """Refuse to overwrite a teacher run that an unfinished student distils.

    Raises:
        RunFolderError: naming the student and the fix.
    """
    students = unfinished_students(teacher)
    if not students:
        return
    more = f" (and {len(students) - 1} more)" if len(students) > 1 else ""
    raise RunFolderError(
        f"--overwrite refuses to replace {teacher}: it is the teacher of the unfinished run "
        f"{students[0]}{more}, which could then not resume; finish it first (auxilia train "
        f"--resume {students[0]}), or delete it")
