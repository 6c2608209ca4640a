"""The idle timeout of a connection, measured by byte counts so the hot path never touches a
timer: every half timeout, look whether ``progress()`` moved; two looks in a row without a
byte (a whole timeout) call ``on_idle`` once. A connection that moves pays nothing per byte,
and one timer per connection rather than one per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleWatch:
    __slots__ = ("_handle", "_loop", "_on_idle", "_period", "_progress", "_seen", "_ticks")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        progress: Callable[[], int],
        on_idle: Callable[[], object],
    ) -> None:
        self._loop = loop
        self._period = timeout / 2
        self._progress = progress
        self._on_idle = on_idle
        self._seen = -1
        self._ticks = 0
        self._handle: asyncio.TimerHandle | None = loop.call_later(self._period, self._check)

    def _check(self) -> None:
        progress = self._progress()
        if progress == self._seen:
            self._ticks += 1
            if self._ticks >= 2:  # no byte for a whole timeout
                self._handle = None
                self._on_idle()
                return
        else:
            self._ticks = 0
        self._seen = progress
        self._handle = self._loop.call_later(self._period, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
