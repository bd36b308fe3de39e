"""The run folder: what auxilia owns, how it is replaced, and who may write it.

A folder is auxilia's only when auxilia made it: :meth:`RunFolder.create` writes a marker file
(:data:`MARKER`) into every run folder it creates, and ``--overwrite`` replaces only a folder
that carries the marker and holds nothing but what auxilia writes (:data:`OWNED_ENTRIES`).
The old run is first moved aside and deleted only once the new run has written its first
checkpoint, so a run that fails early leaves the old one as it was.

Two processes never write one run folder: :class:`RunLock` holds an exclusive ``flock`` on a
sibling file ``.<name>.lock`` for the whole run. The kernel releases it when the holder dies,
so a crash (even ``kill -9``) never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from auxilia.atomic_files import TEMPORARY_GLOB, atomic_write
from auxilia.config import check_run_name

__all__ = ["MARKER", "RunFolder", "RunFolderError", "RunLock", "RunLockedError",
           "check_run_name", "foreign_entries", "is_run_folder"]

MARKER = ".auxilia-run"
"""File that :meth:`RunFolder.create` writes into every run folder it creates."""

REPLACED_PREFIX = ".replaced."
"""Prefix of the hidden sibling an old run waits in while ``--overwrite`` replaces it."""

STUDENTS = "students"
"""Sub-folder of a teacher run where each student that distils it records itself
(:mod:`auxilia.engine.teacher_runs`)."""

OWNED_ENTRIES: dict[str, tuple[str, ...]] = {
    ".": (MARKER, "config.yaml", "metrics.jsonl", "summary.json", "data.json", "curves.png",
          "anytime.json", "anytime.png", "anytime-last.json", "anytime-last.png", "tb",
          "checkpoints", "export", STUDENTS, TEMPORARY_GLOB),
    "checkpoints": ("last.pt", "best.pt", TEMPORARY_GLOB),
    "tb": ("events.out.tfevents.*",),
    "export": ("model.pt", "model.onnx", "model.safetensors", "model.json", TEMPORARY_GLOB),
    STUDENTS: ("*.json", TEMPORARY_GLOB),
}
"""What auxilia writes into a run folder (file-name patterns, per sub-folder)."""

class RunFolderError(FileExistsError):
    """The run folder exists (or is missing, on resume); the message says what to do."""


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock; the message names it."""


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that auxilia created (it carries :data:`MARKER`)."""
    return (Path(path) / MARKER).is_file()


def foreign_entries(path: Path) -> list[str]:
    """Entries of a run folder that auxilia does not write (relative paths, sorted)."""
    found: list[str] = []
    for sub, patterns in OWNED_ENTRIES.items():
        folder = path / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            rel = entry.name if sub == "." else f"{sub}/{entry.name}"
            subfolder = sub == "." and entry.name in OWNED_ENTRIES
            if not any(fnmatch(entry.name, p) for p in patterns):
                found.append(rel)
            elif entry.is_symlink() or (subfolder != entry.is_dir()):
                found.append(rel)  # a link, or a file where auxilia keeps a folder (or back)
    return sorted(found)


class RunFolder:
    """Paths of a run folder, and the rules for creating, replacing and resuming it.

    Layout: ``.auxilia-run`` (marker), ``config.yaml`` (resolved), ``data.json`` (the data's
    fingerprint), ``metrics.jsonl``, ``tb/``, ``curves.png``, ``summary.json``,
    ``checkpoints/{last,best}.pt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.marker = self.path / MARKER
        self.config = self.path / "config.yaml"
        self.data = self.path / "data.json"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tb"
        self.curves = self.path / "curves.png"
        self.summary = self.path / "summary.json"
        self.last = self.path / "checkpoints" / "last.pt"
        self.best = self.path / "checkpoints" / "best.pt"
        self._replaced: Path | None = None
        self._id: str | None = None  # the marker's run id, once read or written

    # ------------------------------------------------------------------ checks

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse what would lose work: resuming a missing run, replacing a foreign folder.

        Raises:
            RunFolderError: naming the folder and what to do instead.
        """
        if resume:
            self._check_resumable()
        elif self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise RunFolderError(f"run folder {self.path} exists and is not a folder (a file or "
                                 "a link); set run.name or run.dir to another place")
        elif self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise RunFolderError(f"run folder {self.path} already exists; pass --overwrite "
                                     "to replace it, --resume to continue it, or set run.name")
            self._check_replaceable()

    def _check_resumable(self) -> None:
        if not self.path.is_dir():
            raise RunFolderError(f"cannot resume: run folder {self.path} does not exist; "
                                 "start the run without --resume")
        if self.last.is_file():
            return
        if self.best.is_file():
            raise RunFolderError(
                f"cannot resume: {self.last} does not exist but {self.best} does; to continue "
                f"from the best checkpoint, copy it (cp {self.best} {self.last}) and resume "
                "again; `auxilia eval` and `auxilia export` use best.pt as it is (--overwrite "
                "would delete it)")
        raise RunFolderError(f"cannot resume: {self.last} does not exist (the run stopped "
                             "before its first checkpoint); start it again with --overwrite")

    def _check_replaceable(self) -> None:
        if not is_run_folder(self.path):
            raise RunFolderError(
                f"--overwrite refuses to replace {self.path}: it has no {MARKER} marker, so "
                "auxilia did not create it (runs of earlier auxilia versions lack it too: delete "
                "such a folder yourself); set run.name or run.dir to another place")
        foreign = foreign_entries(self.path)
        if foreign:
            shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more"
                                               if len(foreign) > 8 else "")
            raise RunFolderError(
                f"--overwrite refuses to replace {self.path}: it holds files auxilia did not "
                f"write ({shown}); move them out first, or set run.name")

    # ------------------------------------------------------------------ changes

    def create(self) -> None:
        """Create the run folder; an existing one (allowed by ``check``) is moved aside.

        The old run stays at a hidden sibling until :meth:`drop_replaced` (called once the new
        run has a checkpoint) or :meth:`restore_replaced` (the new run failed before that).
        """
        if self.path.exists() and any(self.path.iterdir()):
            self._check_replaceable()  # again: the folder may have changed since ``check``
            # a fresh empty folder, which the rename replaces (POSIX renames onto empty folders)
            aside = Path(tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{self.path.name}.",
                                          dir=self.path.parent))
            os.replace(self.path, aside)
            self._replaced = aside
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.write_marker()

    def stale_replacements(self) -> list[Path]:
        """Old runs that an ``--overwrite`` killed before its first checkpoint left aside."""
        pattern = f"{REPLACED_PREFIX}{self.path.name}.*"
        return sorted(p for p in self.path.parent.glob(pattern)
                      if p != self._replaced and is_run_folder(p))

    def write_marker(self, run_id: str | None = None) -> None:
        """Mark the folder as auxilia's, with the run's id (a new random one by default).

        Every checkpoint records the id (:meth:`identity`), so that a ``last.pt`` copied in from
        another run is told apart on resume. Also done when resuming a run that predates the
        marker or the id; an existing marker's creation time is kept.
        """
        created = self._read_marker().get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        run_id = run_id or uuid.uuid4().hex
        text = json.dumps({"auxilia": "run folder", "created": created,
                           "id": run_id}).encode() + b"\n"
        atomic_write(self.marker, lambda f: f.write(text))
        self._id = run_id

    def run_id(self) -> str | None:
        """The run's id from the marker; None without a marker or with one from before ids."""
        if self._id is None:
            found = self._read_marker().get("id")
            self._id = found if isinstance(found, str) and found else None
        return self._id

    def identity(self) -> dict[str, str]:
        """What a checkpoint records of its run: the id and the folder (``{}`` without an id)."""
        run_id = self.run_id()
        return {"id": run_id, "folder": str(self.path.resolve())} if run_id else {}

    def _read_marker(self) -> dict[str, Any]:
        if not self.marker.is_file():  # never open a FIFO or a folder put in its place
            return {}
        try:
            info = json.loads(self.marker.read_text())
        except (OSError, ValueError):  # missing, or damaged: treated as from before ids
            return {}
        return info if isinstance(info, dict) else {}

    def drop_replaced(self) -> None:
        """Delete the run that ``create`` moved aside (no-op when there is none)."""
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def restore_replaced(self) -> bool:
        """Put the old run back after the new one failed before its first checkpoint.

        Returns:
            Whether an old run was put back.
        """
        aside, self._replaced = self._replaced, None
        if aside is None or not is_run_folder(self.path) or foreign_entries(self.path):
            return False
        shutil.rmtree(self.path)
        os.replace(aside, self.path)
        return True

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries an interrupted atomic write left behind; returns them."""
        stale = [p for folder in (self.path, self.last.parent) if folder.is_dir()
                 for p in folder.glob(TEMPORARY_GLOB) if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def write_config(self, config: dict[str, Any]) -> None:
        text = yaml.safe_dump(config, sort_keys=False).encode()
        atomic_write(self.config, lambda f: f.write(text))

    def read_records(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``; a last line torn by a crash is dropped.

        Raises:
            ValueError: a line other than the last is not JSON (naming the file and line).
        """
        if not self.metrics.is_file():
            return []
        lines = [(i, line) for i, line in enumerate(self.metrics.read_text().splitlines(), 1)
                 if line.strip()]
        records = []
        for i, line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                if i == lines[-1][0]:
                    break  # torn by a crash or a full disk: it will be written again
                raise ValueError(f"{self.metrics} line {i} is not JSON; fix or delete that "
                                 "line") from None
        return records

    def lock(self) -> RunLock:
        """The lock that keeps a second process out of this run folder."""
        return RunLock(self.path)


class RunLock:
    """An exclusive, crash-safe lock on a run folder: ``flock`` on ``.<name>.lock`` beside it.

    The lock file records the holder (pid, host, start time, command line) for the message a
    second process gets. A crashed holder's lock is released by the kernel; the file it leaves
    is taken over by the next process.
    """

    def __init__(self, run_path: Path, what: str = "run folder") -> None:
        self.run_path = run_path
        self.what = what  # "run folder", "sweep folder", ...: for the messages
        self.path = run_path.with_name(f".{run_path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming its holder."""
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"run.dir {parent} is a file, not a folder; set run.dir to a "
                                 "folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot create the run folder's parent {self.path.parent} "
                                 f"(run.dir): {err.strerror or err}; set run.dir to a folder "
                                 "you can write") from None
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunFolderError(f"cannot create the lock file {self.path}: "
                                     f"{err.strerror or err}; set run.dir to a folder you can "
                                     "write") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.what} {self.run_path} is in use by {self.holder()}; wait for that "
                    + ("run to finish or stop it, or set run.name for a new run"
                       if self.what == "run folder" else "process to finish or stop it")
                    ) from None
            try:  # a holder may have released and deleted the file between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
            self._fd = fd
            try:  # who holds the lock is for other processes' messages only
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(info).encode())
            except OSError:
                pass  # e.g. a full disk: the lock itself holds; the message names the file
        return self

    def holder_pid(self) -> int | None:
        """The process that holds (or last held) the lock, from the lock file, if it says."""
        try:
            return int(json.loads(self.path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def holder(self) -> str:
        """The holder, for messages: pid, host, start time and command line."""
        try:
            info = json.loads(self.path.read_text())
            return (f"process {info['pid']} on {info['host']} (started {info['started']}: "
                    f"{info['command']})")
        except (OSError, ValueError, KeyError, TypeError):
            return f"another process (lock file {self.path})"

    def release(self) -> None:
        """Delete the lock file and release the lock (in that order, while still holding it)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
