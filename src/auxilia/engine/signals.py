"""Stop requests: Ctrl-C and the signals a cluster sends, turned into a checkpoint and an exit.

The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption, ``timeout``, ``docker stop``)
asks the loop to stop at the next step boundary: it writes ``last.pt``, prints the resume
command and raises :class:`Interrupted`; a second one aborts at once. The command line exits
with ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), the shells' convention.

Flags nest. A sweep or a pipeline holds one around all its runs, and each run holds its own: a
request that reaches the run's flag (while it trains, evaluates or writes its summary) is handed
to the enclosing flag when the run ends, and a request that came before a run began is
inherited by the run's flag. So a signal at any moment stops the whole sweep or pipeline: the
runner asks :meth:`StopFlag.check` between runs, whatever the run did with it.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_ACTIVE: list[StopFlag] = []
"""The flags that hold the signal handlers now, outermost first."""


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; ``signum`` says which (``exit_code`` = 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopFlag:
    """Context manager: the first stop signal sets :attr:`signum`; a second one aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._outer: StopFlag | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def request(self, signum: int) -> None:
        """Record a stop request as the signal handler does (the first one wins)."""
        if self.signum is None:
            self.signum = int(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self) -> StopFlag:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        if self._previous:
            self._outer = _ACTIVE[-1] if _ACTIVE else None
            if self._outer is not None and self._outer.signum is not None:
                self.request(self._outer.signum)  # asked to stop before this part began
            _ACTIVE.append(self)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        if self._previous and _ACTIVE and _ACTIVE[-1] is self:
            _ACTIVE.pop()
        self._previous.clear()
        if self._outer is not None and self.signum is not None:
            self._outer.request(self.signum)  # the enclosing sweep or pipeline stops too
        self._outer = None
