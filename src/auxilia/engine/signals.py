"""Stop requests: Ctrl-C and the signals a cluster sends, turned into a checkpoint and an exit.

The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption, ``timeout``, ``docker stop``)
asks the loop to stop at the next step boundary: it writes ``last.pt``, prints the resume
command and raises :class:`Interrupted`; a second one aborts at once. The command line exits
with ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), the shells' convention.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def __enter__(self) -> StopFlag:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
