"""One progress display across a whole sweep: runs done, each running run's step, time left.

On a terminal it is a live ``rich`` panel; elsewhere (a log file, CI) one line per run start
and end, and a step line with the time left in the run and in the sweep once a minute. Time
left is estimated from the seconds per step each variant took so far in this session
(variants differ: CDS steps cost several plain ones), shared among the workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from auxilia.engine.runlog import format_seconds

__all__ = ["SweepProgress", "format_seconds"]

FIRST_LINE_S = 10.0
"""Seconds into a run after which a log shows its first step line (its pace by then)."""
LINE_EVERY_S = 60.0
"""Seconds between two step lines of one run in a log."""


class SweepProgress:
    """Tracks a sweep's runs; ``live`` draws a panel, otherwise lines are printed."""

    def __init__(self, name: str, keys: Sequence[str], labels: Sequence[str], *,
                 todo: Sequence[int], workers: int = 1, live: bool = False,
                 console: Console | None = None) -> None:
        self.name, self.keys, self.labels = name, list(keys), list(labels)
        self.todo = list(todo)  # the runs this session trains (the others finished before)
        self.workers = workers
        self.console = console or Console()
        self.done, self.failed = len(self.keys) - len(self.todo), 0
        self.total: dict[int, int] = {}
        self.step_now: dict[int, int] = {}
        self.first_step: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.running: set[int] = set()
        self.closed: set[int] = set()
        self.spent: dict[str, list[float]] = {}  # variant -> [seconds, steps] of this session
        self.begin = time.monotonic()
        self._said: dict[int, float] = {}  # run -> when its last step line was printed
        self._live = Live(console=self.console, refresh_per_second=2,
                          get_renderable=self._render) if live else None

    def __enter__(self) -> SweepProgress:
        if self._live is not None:
            self._live.start()
        else:
            self.console.print(f"sweep {self.name}: {len(self.keys)} runs, {self.done} finished "
                               f"before, {self.workers} at a time", highlight=False, soft_wrap=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
        self.console.print(self._summary_line(), highlight=False, soft_wrap=True)

    def start(self, index: int, total: int | None) -> None:
        """A run starts: ``total`` steps, or None when a time budget derives them."""
        self.started[index] = time.monotonic()
        if total is not None:
            self.total[index] = total
        self.running.add(index)
        if self._live is None:
            what = f"{total} steps" if total is not None else "a time budget"
            self.console.print(f"[{self.done + self.failed + 1}/{len(self.keys)}] "
                               f"{self.keys[index]}: training ({what})",
                               highlight=False, soft_wrap=True)

    def step(self, index: int, step: int) -> None:
        self.first_step.setdefault(index, step - 1)
        self.step_now[index] = step
        if self._live is None and self._due(index):
            self.console.print(self._step_line(index), highlight=False, soft_wrap=True)

    def _due(self, index: int) -> bool:
        """A log gets a step line :data:`FIRST_LINE_S` into a run, then every
        :data:`LINE_EVERY_S` (a long run is never silent)."""
        now = time.monotonic()
        last = self._said.get(index)
        due = (now - self.started.get(index, now) >= FIRST_LINE_S if last is None
               else now - last >= LINE_EVERY_S)
        if due:
            self._said[index] = now
        return due

    def _step_line(self, index: int) -> str:
        step, total = self.step_now.get(index, 0), self.total.get(index)
        elapsed = time.monotonic() - self.started.get(index, time.monotonic())
        done = step - self.first_step.get(index, 0)
        line = (f"  {self.keys[index]}: step {step}/{total or '?'}, "
                f"{format_seconds(elapsed)} elapsed")
        if done > 0 and total is not None:
            line += f", ~{format_seconds(elapsed / done * max(0, total - step))} left in this run"
        left = self.seconds_left()
        return line + (f", ~{format_seconds(left)} left in the sweep" if left is not None else "")

    def finish(self, index: int, failed: bool = False, error: str = "") -> None:
        self.running.discard(index)
        self.closed.add(index)
        if index in self.started:
            seconds = time.monotonic() - self.started[index]
            steps = self.step_now.get(index, 0) - self.first_step.get(index, 0)
            spent = self.spent.setdefault(self.labels[index], [0.0, 0])
            spent[0] += seconds
            spent[1] += steps
        else:
            seconds = 0.0
        if failed:
            self.failed += 1
        else:
            self.done += 1
        what = f"FAILED: {error}" if failed else "finished"
        self.console.print(f"{self.keys[index]}: {what} after {format_seconds(seconds)}",
                           highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def seconds_left(self) -> float | None:
        """Estimated seconds until every run is done; None before any step was timed."""
        rates = {v: s / n for v, (s, n) in self.spent.items() if n > 0}
        now = time.monotonic()
        for i in self.running:
            n = self.step_now.get(i, 0) - self.first_step.get(i, 0)
            if n > 0 and self.labels[i] not in rates:
                rates[self.labels[i]] = (now - self.started[i]) / n
        if not rates:
            return None
        default = sum(rates.values()) / len(rates)
        typical = max(self.total.values()) if self.total else 0
        left = 0.0
        for i in self.todo:
            if i not in self.closed:
                steps = self.total.get(i, typical) - self.step_now.get(i, 0)
                left += max(0, steps) * rates.get(self.labels[i], default)
        return left / self.workers

    def _summary_line(self) -> str:
        return (f"sweep {self.name}: {self.done}/{len(self.keys)} runs finished"
                + (f", {self.failed} failed" if self.failed else "")
                + f" ({format_seconds(time.monotonic() - self.begin)} in this session)")

    def _render(self) -> Group:
        left = self.seconds_left()
        head = (f"sweep {self.name}: {self.done}/{len(self.keys)} runs done"
                + (f", {self.failed} failed" if self.failed else "")
                + f" | {format_seconds(time.monotonic() - self.begin)} elapsed"
                + (f", ~{format_seconds(left)} left" if left is not None else ""))
        lines = [Text(head, style="bold")]
        for i in sorted(self.running):
            lines.append(Text(f"  {self.keys[i]}: step {self.step_now.get(i, 0)}/"
                              f"{self.total.get(i, '?')}"))
        return Group(*lines)
