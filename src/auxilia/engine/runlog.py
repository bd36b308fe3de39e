"""The run folder and what is logged into it: metrics.jsonl, TensorBoard, progress."""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from auxilia import jsonio
from auxilia.engine.checkpoint import atomic_write
from auxilia.engine.runfolder import RunFolder, RunFolderError

__all__ = ["MetricsLog", "Progress", "RunFolder", "RunFolderError"]


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
    """A rich progress bar on a terminal, plain log lines otherwise.

    The bar's description shows the latest training line, or what is being evaluated while an
    evaluation runs (:meth:`evaluating`), so a long evaluation never looks like a hang.
    """

    def __init__(self, total: int, start: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total
        self._bar = None
        self._text = ""
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
        self._text = text
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=text)
        elif self.mode == "plain":
            print(f"step {step}/{self.total} {text}", flush=True)

    @contextmanager
    def evaluating(self, split: str, images: int) -> Iterator[None]:
        """Show ``evaluating <split> (<n> images)`` while the block runs.

        On the bar it replaces the description until the block ends; in ``plain`` mode it is
        one line printed before the evaluation starts.
        """
        text = f"evaluating {split} ({images:,} images)"
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        elif self.mode == "plain":
            print(text, flush=True)
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.update(self._task, description=self._text)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "off":
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
