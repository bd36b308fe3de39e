"""The run folder and what is logged into it: metrics.jsonl, TensorBoard, the progress bar, and
the running training averages between two log lines."""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from auxilia import jsonio
from auxilia.atomic_files import atomic_write
from auxilia.engine.runfolder import RunFolder, RunFolderError

__all__ = ["MetricsLog", "ProgressBar", "RunFolder", "RunFolderError", "TrainMeter"]


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


def format_seconds(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"12s"``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressBar:
    """A rich progress bar on a terminal, plain log lines otherwise.

    The bar's description shows the latest training line, or what is being evaluated while an
    evaluation runs (:meth:`evaluating`), so a long evaluation never looks like a hang.
    """

    def __init__(self, total: int, start: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total, self.start = total, start
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
        elif self.mode == "plain":  # a log has no bar: each line says how far and how long
            print(f"step {step}/{self.total} {text} | {self.timing(step)}", flush=True)

    def timing(self, step: int) -> str:
        """``1m05s elapsed, ~3m10s left``: the time left at this session's pace so far
        (evaluations included), none before a step was timed."""
        elapsed = time.perf_counter() - self._t0
        done = step - self.start
        left = (f", ~{format_seconds(elapsed / done * (self.total - step))} left" if done > 0
                else "")
        return f"{format_seconds(elapsed)} elapsed{left}"

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


class TrainMeter:
    """Running sums of the losses and the main exit's training accuracy between log lines.

    Sums stay on the device (no synchronisation per step); :meth:`record` reads them once per
    log line. Skipped steps are not added: their non-finite losses would poison the average.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._keys: tuple[str, ...] = ()
        self._stacked: torch.Tensor | None = None
        self._correct: torch.Tensor | int = 0
        self._seen: torch.Tensor | int = 0
        self._steps = 0

    def add(self, losses: Mapping[str, torch.Tensor], outputs: Mapping[Any, Any],
            batch: Mapping[str, torch.Tensor]) -> None:
        keys = tuple(losses)
        values = torch.stack([v.detach().float() for v in losses.values()])  # one add per step
        if keys != self._keys:  # the first step of a window (the terms are fixed in a run)
            self._flush()
            self._keys, self._stacked = keys, values
        else:
            self._stacked = self._stacked + values
        main = outputs.get(("student", "x_lb")) if isinstance(outputs, Mapping) else None
        if main is not None and "y_lb" in batch and "logits" in main.get("final", {}):
            labels = batch["y_lb"]
            known = labels >= 0  # hidden labels (-1, a dense task) are not counted; no sync
            self._correct = self._correct + ((main["final"]["logits"].argmax(1) == labels)
                                             & known).sum()
            self._seen = self._seen + known.sum()
        self._steps += 1

    def _flush(self) -> None:
        """Fold the stacked sums into the per-key sums (when the set of losses changes)."""
        if self._stacked is not None:
            for key, value in zip(self._keys, self._stacked, strict=True):
                self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._keys, self._stacked = (), None

    def record(self, step: int, lr: float) -> dict[str, Any]:
        """The log record of the window since the last call, and a reset."""
        self._flush()
        n = max(1, self._steps)
        record: dict[str, Any] = {"step": step, "lr": lr}
        record.update({f"train/{k}": float(v) / n for k, v in self._sums.items()})
        seen = int(self._seen)
        if seen:
            record["train/top1"] = 100.0 * float(self._correct) / seen
        if "train/loss" not in record:  # every step since the last line was skipped
            record["train/skipped_window"] = True
        self.__init__()  # type: ignore[misc]
        return record

    @staticmethod
    def line(record: Mapping[str, Any]) -> str:
        acc = f" acc {record['train/top1']:.1f}%" if "train/top1" in record else ""
        loss = (f"{record['train/loss']:.4f}" if "train/loss" in record
                else "- (steps skipped)")
        return f"loss {loss}{acc} lr {record['lr']:.4g}"
