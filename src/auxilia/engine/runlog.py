"""The run folder and what is logged into it: metrics.jsonl, TensorBoard, progress."""

from __future__ import annotations

import errno
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from auxilia import jsonio
from auxilia.engine.checkpoint import TEMPORARY_GLOB, atomic_write


class RunFolderError(FileExistsError):
    """The run folder exists (or is missing, on resume); the message says what to do."""


class RunFolder:
    """Paths of a run folder.

    Layout: ``config.yaml`` (resolved), ``metrics.jsonl``, ``tb/``, ``curves.png``,
    ``summary.json``, ``checkpoints/{last,best}.pt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tb"
        self.curves = self.path / "curves.png"
        self.summary = self.path / "summary.json"
        self.last = self.path / "checkpoints" / "last.pt"
        self.best = self.path / "checkpoints" / "best.pt"

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to start over an existing run (unless asked) or to resume a missing one."""
        if resume:
            if not self.path.is_dir():
                raise RunFolderError(f"cannot resume: run folder {self.path} does not exist; "
                                     "start the run without --resume")
            if not self.last.is_file():
                raise RunFolderError(f"cannot resume: {self.last} does not exist (the run "
                                     "stopped before its first checkpoint); start it again with "
                                     "--overwrite")
        elif self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise RunFolderError(f"run folder {self.path} already exists; pass --overwrite "
                                 "to replace it, --resume to continue it, or set run.name")

    def create(self) -> None:
        """Create an empty run folder, replacing an existing one (``check`` allowed it)."""
        if self.path.exists():
            shutil.rmtree(self.path)
        (self.path / "checkpoints").mkdir(parents=True)

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


class MetricsLog:
    """Append-only ``metrics.jsonl`` plus TensorBoard scalars.

    On resume, records after the checkpoint's step are dropped (they will be written again).
    """

    def __init__(self, folder: RunFolder, *, tensorboard: bool, resume_step: int | None) -> None:
        self.folder = folder
        if resume_step is not None:
            kept = [r for r in folder.read_records() if r["step"] <= resume_step]
            text = "".join(jsonio.dumps(r) + "\n" for r in kept).encode()
            atomic_write(folder.metrics, lambda f: f.write(text))
        self._file = folder.metrics.open("a")
        self._failed = False
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(folder.tensorboard), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (flushed) and add its numbers to TensorBoard.

        Raises:
            OSError: the append failed (e.g. no space left on device), naming the file.
        """
        try:
            self._file.write(jsonio.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:
            self._failed = True
            reason = err.strerror or str(err) or type(err).__name__
            fix = "free some space" if err.errno == errno.ENOSPC else "fix that"
            message = (f"cannot append to {self.folder.metrics}: {reason}; the checkpoints are "
                       f"unaffected: {fix}, then resume with --resume")
            raise (OSError(err.errno, message) if err.errno is not None
                   else OSError(message)) from err
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:  # after a failed write, its error is the one to report
                raise
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, start: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total
        self._bar = None
        self._t0 = time.perf_counter()
        if mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.description}"))
            self._task = self._bar.add_task("", total=total, completed=start)
            self._bar.start()

    def update(self, step: int, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=text)
        elif self.mode == "plain":
            print(f"step {step}/{self.total} {text}", flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "off":
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
