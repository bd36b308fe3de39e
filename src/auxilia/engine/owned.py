"""Folders that hold runs or reports: sweep, pipeline and report folders, owned like run folders.

The rules of run folders (:mod:`auxilia.engine.runfolder`) hold for every folder auxilia
writes: it is auxilia's only when auxilia made it, everything is checked before anything is
written, and one process writes it at a time. :class:`OwnedFolder` is that one code path for
the folders ``auxilia compare``, ``auxilia rounds`` and ``auxilia report`` write:

* a marker file per kind (:data:`MARKERS`) is written when auxilia creates the folder;
* an existing folder is taken only when it carries the marker of its kind, is empty, or holds
  nothing but what auxilia writes (a folder from before markers existed); anything else, a
  folder of another kind (a run folder named as a sweep), and a folder inside a run folder,
  are refused naming what is there;
* :meth:`OwnedFolder.lock` is a :class:`~auxilia.engine.runfolder.RunLock` on the folder, so a
  second ``auxilia compare`` of one sweep is refused naming the process that holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path

from auxilia.atomic_files import TEMPORARY_GLOB, atomic_write
from auxilia.engine.runfolder import (
    MARKER,
    REPLACED_PREFIX,
    RunFolderError,
    RunLock,
    RunLockedError,
    is_run_folder,
)

__all__ = ["MARKERS", "OwnedFolder", "check_not_in_busy_folder", "enclosing_run", "folder_kind"]

MARKERS = {"run": MARKER, "sweep": ".auxilia-sweep", "pipeline": ".auxilia-pipeline",
           "report": ".auxilia-report", "labels": ".auxilia-labels"}
"""The marker file of each kind of folder auxilia creates."""


def folder_kind(path: Path) -> str | None:
    """The kind of auxilia folder ``path`` is (by its marker), or None."""
    for kind, marker in MARKERS.items():
        if (path / marker).is_file():
            return kind
    return None


def enclosing_run(path: Path) -> Path | None:
    """The run folder ``path`` lies in or is (any spelling: the path is resolved), or None."""
    path = Path(os.path.realpath(path.expanduser()))
    for folder in (path, *path.parents):
        if is_run_folder(folder):
            return folder
    return None


def _enclosing(path: Path, kinds: tuple[str, ...]) -> tuple[str, Path] | None:
    """The nearest folder above ``path`` (resolved) that is of one of ``kinds``."""
    for folder in Path(os.path.realpath(path.expanduser())).parents:
        kind = folder_kind(folder)
        if kind in kinds:
            return kind, folder
    return None


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (a file)."""
    for folder in path.parents:
        if folder.exists() or folder.is_symlink():
            return None if folder.is_dir() else folder
    return None


def _holds_key(path: Path, key: str | None) -> bool:
    """Whether ``path`` is a JSON object holding the list ``key`` (a record auxilia wrote)."""
    if key is None:
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get(key), list)


def check_not_in_busy_folder(run_path: Path) -> None:
    """Refuse a run in a sweep or pipeline folder that another process is running.

    The process running the sweep (its runs, its workers) may; anyone else would write a run
    folder the sweep or pipeline is about to train, or is planning around.

    Raises:
        RunLockedError: naming the folder and the process that holds it.
    """
    found = _enclosing(run_path, ("sweep", "pipeline"))
    if found is None:
        return
    kind, folder = found
    lock = RunLock(folder, what=f"{kind} folder")
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody runs it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    except OSError:
        pass  # held
    finally:
        os.close(fd)
    if lock.holder_pid() in (os.getpid(), os.getppid()):
        return  # the sweep's own run, in this process or in one of its workers
    raise RunLockedError(f"run folder {run_path} is in the {kind} folder {folder}, which is in "
                         f"use by {lock.holder()}; wait for it to finish, or set run.dir "
                         "outside it")


class OwnedFolder:
    """A sweep, pipeline or report folder: checked, created with its marker, and locked.

    Args:
        path: the folder.
        kind: ``sweep``, ``pipeline`` or ``report``.
        own_files: the files auxilia writes at its top level, each with the list its JSON
            object holds (``{"sweep.json": "runs"}``), to recognise a folder made before
            markers existed; None: such a folder is never taken without its marker (report
            folders always carried one).
        hint: the fix to name when the folder is refused (``give the sweep another name``).
    """

    def __init__(self, path: Path, kind: str, own_files: Mapping[str, str] | None = None,
                 hint: str = "choose another folder") -> None:
        self.path, self.kind, self.hint = Path(path), kind, hint
        self.marker = self.path / MARKERS[kind]
        self.own_files = None if own_files is None else dict(own_files)

    @property
    def what(self) -> str:
        return f"{self.kind} folder"

    def check(self) -> None:
        """Refuse a folder auxilia may not write as this kind; reads only.

        Raises:
            RunFolderError: the folder is a file, lies inside a run folder, is a folder of
                another kind, or holds files auxilia did not write (naming them and the fix).
        """
        path = self.path
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise RunFolderError(f"{self.what} {path} exists and is not a folder (a file or a "
                                 f"link); {self.hint}")
        blocking = _blocking_file(path)
        if blocking is not None:
            raise RunFolderError(f"{self.what} {path} cannot be made: {blocking} is a file, not "
                                 f"a folder; {self.hint}")
        run = enclosing_run(path)
        if run is not None:
            where = "is" if run == Path(os.path.realpath(path)) else "would be inside"
            raise RunFolderError(f"{self.what} {path} {where} the run folder {run}; "
                                 f"{self.hint}")
        self._check_not_nested()
        if not path.is_dir() or not any(path.iterdir()):
            return
        kind = folder_kind(path)
        if kind == self.kind:
            return
        if kind is not None:
            raise RunFolderError(f"{path} is a {kind} folder, not a {self.what}; {self.hint}")
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more"
                                               if len(foreign) > 6 else "")
            raise RunFolderError(f"{path} exists and auxilia did not make it as a {self.what} "
                                 f"(it holds {shown}); {self.hint}")

    def _check_not_nested(self) -> None:
        """Sweeps and pipelines never lie inside one another; a report may sit directly in a
        sweep folder (its ``results/``), a labelling round's folder directly in a pipeline
        folder, nowhere deeper."""
        outer = _enclosing(self.path, ("sweep", "pipeline"))
        if outer is None:
            return
        kind, folder = outer
        here = Path(os.path.realpath(self.path.expanduser()))
        if here.parent == folder and (self.kind, kind) in (("report", "sweep"),
                                                           ("labels", "pipeline")):
            return  # a sweep's report, a pipeline's labelling round
        raise RunFolderError(f"{self.what} {self.path} would be inside the {kind} folder "
                             f"{folder}, among the runs it owns; {self.hint}")

    def foreign_entries(self) -> list[str]:
        """What in the folder auxilia would not have written there (sorted names)."""
        if self.own_files is None:
            return sorted(e.name for e in self.path.iterdir())
        return sorted(e.name for e in self.path.iterdir() if not self._ours(e, depth=1))

    def _ours(self, entry: Path, depth: int) -> bool:
        name = entry.name
        if entry.is_symlink():
            return False
        if entry.is_file():
            return (_holds_key(entry, (self.own_files or {}).get(name))
                    or fnmatch(name, TEMPORARY_GLOB) or fnmatch(name, ".*.lock"))
        if not entry.is_dir():
            return False
        if is_run_folder(entry) or name.startswith(REPLACED_PREFIX) or folder_kind(entry):
            return True
        # a sweep's variant folder holds run folders (and their lock files) only
        return depth > 0 and all(self._ours(e, depth - 1) for e in entry.iterdir())

    def create(self) -> None:
        """Create the folder (and its parents) and write the marker, once checked."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            text = json.dumps({"auxilia": self.what, "created": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n"
            atomic_write(self.marker, lambda f: f.write(text))

    def lock(self) -> RunLock:
        """The lock that keeps a second process out of this folder (a sibling lock file)."""
        return RunLock(self.path, what=self.what)
