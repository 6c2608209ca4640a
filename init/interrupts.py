"""Termination signals during a change are acted on between steps, never inside one.

A ``kill`` (SIGTERM), Ctrl-C or a hang-up that lands while ``apply`` is between the IPv4 and
the IPv6 restore would, by default, end the process with half a rule set installed. Instead
the signals are blocked for the change; the installer asks ``pending()`` at each step
boundary and, when one arrived, rolls back to the snapshot and says so. A signal that
arrives once the change is complete is taken (logged, not acted on): the namespace is in its
full state, and dying now would only report it wrongly.

SIGKILL cannot be deferred; what it leaves is converged by the next ``apply`` or ``cleanup``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DEFERRED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(Exception):
    """A termination signal arrived during a change, before the step ``before``."""

    def __init__(self, signal_name: str, before: str) -> None:
        super().__init__(f"interrupted by {signal_name} before {before}")
        self.signal_name = signal_name
        self.before = before


def _take_pending() -> str | None:
    """Consume one pending deferred signal; its name, or None if none arrived."""
    info = signal.sigtimedwait(DEFERRED, 0)
    return signal.Signals(info.si_signo).name if info is not None else None


@contextmanager
def deferred_termination(
    on_late: Callable[[str], None] | None = None,
) -> Iterator[Callable[[], str | None]]:
    """Block SIGTERM/SIGINT/SIGHUP; yield ``pending()``, which consumes one that arrived and
    names it (None if none did). On exit any still pending is consumed and reported to
    ``on_late``, then the previous mask comes back."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield _take_pending
    finally:
        while (name := _take_pending()) is not None:
            if on_late is not None:
                on_late(name)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
