"""SIGTERM ends a run as Ctrl-C does: a shutdown, a closed session or ``kill`` is an interruption.

:class:`StopOnSigterm` turns SIGTERM into :class:`Terminated` (a :class:`KeyboardInterrupt`)
while a run is under way, so the run's interrupt path writes its report and tells the
user to run the same command again. Inside :meth:`StopOnSigterm.critical` the signal
waits until the block is done: a photo's copy and its record are written together.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("cloak")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM during a run."""


class StopOnSigterm:
    """A context manager: while active, SIGTERM raises :class:`Terminated` in the main thread.

    The previous handler is put back on exit. Signal handlers belong to the main thread,
    so in any other thread (the web page's worker, a caller's thread) it does nothing and
    SIGTERM keeps whatever the process set up.
    """

    def __init__(self) -> None:
        self._installed = False
        self._previous: object = signal.SIG_DFL
        self._depth = 0
        self._pending = False

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
            previous = signal.signal(signal.SIGTERM, self._handle)
            # None: a handler set outside Python, which Python cannot put back; the default it is.
            self._previous = signal.SIG_DFL if previous is None else previous
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        """The SIGTERM handler: stops now, or at the end of the critical block in progress."""
        if self._depth:
            self._pending = True
            return
        raise Terminated

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A block SIGTERM does not cut in two: a stop asked for meanwhile comes at its end."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                raise Terminated
