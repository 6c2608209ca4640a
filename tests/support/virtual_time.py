"""An asyncio event loop whose clock is virtual: it jumps to the next timer instead of waiting.

For unit tests of code whose behaviour is made of deadlines (per-try and route timeouts,
back-off, fault delays): a test that "waits" 30 virtual seconds finishes in microseconds, and
what fired when is exact, not a matter of scheduling luck. Real I/O has no place here: the
loop's selector never blocks, and asking it to wait forever (nothing ready, no timer) means
the code under test is stuck, which the test is told at once instead of hanging.

    loop = VirtualTimeLoop()
    result = loop.run_until_complete(coroutine())
    assert loop.time() == pytest.approx(2.5)
"""

from __future__ import annotations

import asyncio
import selectors


class Stuck(RuntimeError):
    """Nothing is ready and no timer is pending: the code under test waits for nothing."""


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)  # the loop's own self-pipe (call_soon_threadsafe) only
        if ready:
            return ready
        if timeout is None:
            raise Stuck("no callback ready and no timer pending: the code under test is stuck")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` advances only by jumping to the next timer."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self))
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run(coroutine, loop: VirtualTimeLoop | None = None):  # type: ignore[no-untyped-def]
    """Run ``coroutine`` to completion on a (new) virtual-time loop and close it."""
    own = loop is None
    loop = loop or VirtualTimeLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        if own:
            loop.close()
