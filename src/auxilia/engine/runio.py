"""A run's input and output: its folder, its metrics log and its progress display.

:class:`RunIO` is the typed I/O half of a run (:class:`~auxilia.engine.context.RunContext`
holds the state). A run being built, a throw-away timing, or a process that does not write
(every rank but 0 of a distributed run) gets the silent twins: a log that keeps nothing and a
display that shows nothing, so the loop never asks who it is before it logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auxilia.engine.runlog import MetricsLog, ProgressBar, RunFolder


class SilentLog:
    """A metrics log that keeps nothing (:class:`MetricsLog`'s twin where nothing is written)."""

    def write(self, record: dict[str, Any]) -> None:
        """Keep nothing."""

    def close(self) -> None:
        """Nothing to close."""


def silent_bar(total: int = 0, start: int = 0) -> ProgressBar:
    """A progress display that shows nothing."""
    return ProgressBar(total, start, "off")


@dataclass
class RunIO:
    """Where a run writes: its folder (None until it has one), its log and its display.

    ``writes`` is False on a process that must not write the run's files (a distributed run's
    ranks but 0): such a process has the folder's paths, to name them, but its log and
    display are silent and it writes no checkpoint.
    """

    folder: RunFolder | None = None
    log: MetricsLog | SilentLog = field(default_factory=SilentLog)
    bar: ProgressBar = field(default_factory=silent_bar)
    writes: bool = True
