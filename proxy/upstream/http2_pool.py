"""HTTP/2 upstream connections of one cluster, per host: one multiplexed connection serves
every concurrent request (Envoy's HTTP/2 pool), a second one only when the first is full (the
peer's stream limit) or going away (GOAWAY).

Requests that find no usable connection while one is being connected wait for it instead of
each opening its own: a burst of 100 streams costs one TCP handshake, not 100. A connection
with no stream is closed after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from proxy.upstream.hosts import Host

if TYPE_CHECKING:  # h2 loads with the first HTTP/2 upstream, not with the sidecar
    from proxy.http2.client import Http2Upstream


class Http2Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        self._loop = loop
        self._idle_timeout = idle_timeout
        self._connections: dict[Host, list[Http2Upstream]] = {}
        self._connecting: dict[Host, asyncio.Future[Http2Upstream]] = {}
        self._idle_timers: dict[Http2Upstream, asyncio.TimerHandle] = {}
        self.closed = False

    async def connection(
        self, host: Host, connect: Callable[[], Awaitable[Http2Upstream]]
    ) -> tuple[Http2Upstream, bool]:
        """A connection to ``host`` with room for a stream, and whether it is a new one.
        ``connect`` opens one (raising on failure); concurrent callers share its result."""
        while True:
            for upstream in self._connections.get(host, ()):
                if upstream.has_capacity():
                    self._busy(upstream)
                    return upstream, False
            pending = self._connecting.get(host)
            if pending is not None:
                await asyncio.shield(pending)  # raises its failure for every waiter
                continue
            return await self._connect(host, connect), True

    async def _connect(
        self, host: Host, connect: Callable[[], Awaitable[Http2Upstream]]
    ) -> Http2Upstream:
        pending: asyncio.Future[Http2Upstream] = self._loop.create_future()
        pending.add_done_callback(_retrieve)
        self._connecting[host] = pending
        try:
            upstream = await connect()
        except BaseException as exc:
            # Waiters see a connection error even when the connecting try was cancelled.
            failure = exc if isinstance(exc, Exception) else ConnectionError("connect cancelled")
            pending.set_exception(failure)
            raise
        finally:
            del self._connecting[host]
        self._connections.setdefault(host, []).append(upstream)
        upstream.on_lost = lambda lost: self._forget(host, lost)  # type: ignore[arg-type]
        pending.set_result(upstream)
        if self.closed:
            upstream.close()
        return upstream

    def stream_done(self, upstream: Http2Upstream) -> None:
        """A stream on ``upstream`` finished; an idle connection gets its timer."""
        if upstream.streams or upstream.lost or upstream in self._idle_timers:
            return
        if self.closed:
            upstream.close()
            return
        self._idle_timers[upstream] = self._loop.call_later(self._idle_timeout, upstream.close)

    def _busy(self, upstream: Http2Upstream) -> None:
        timer = self._idle_timers.pop(upstream, None)
        if timer is not None:
            timer.cancel()

    def connection_count(self) -> int:
        return sum(len(conns) for conns in self._connections.values())

    def close_all(self) -> None:
        """A reload retired the cluster: idle connections close now, busy ones after their
        last stream (GOAWAY lets the streams in flight finish)."""
        self.closed = True
        for conns in list(self._connections.values()):
            for upstream in list(conns):
                if not upstream.streams:
                    upstream.close()

    def _forget(self, host: Host, upstream: Http2Upstream) -> None:
        conns = self._connections.get(host)
        if conns and upstream in conns:
            conns.remove(upstream)
        self._busy(upstream)


def _retrieve(future: asyncio.Future[Http2Upstream]) -> None:
    """Mark a shared connect failure as seen, whether or not anybody waited for it."""
    if not future.cancelled():
        future.exception()
