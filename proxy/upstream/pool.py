"""Keep-alive HTTP/1.1 upstream connections of one cluster, per host.

An upstream connection goes back to its host's idle list after a complete exchange that left it
reusable (both sides of the codec DONE, no ``Connection: close``). The most recently used one
is taken first, so under light load a few connections stay warm and the rest time out. An idle
connection is dropped when its peer closes it (the channel sees the EOF while idle — so a
request is never sent on a connection known to be closing), after ``idle_timeout``, or after
``max_requests`` exchanges (0 = unlimited), as Envoy's HTTP/1 pool does.
"""

from __future__ import annotations

import asyncio

from proxy.http.channel import HttpChannel
from proxy.http.codec import State
from proxy.upstream.hosts import Host


class UpstreamPool:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, idle_timeout: float, max_requests: int
    ) -> None:
        self._loop = loop
        self._idle_timeout = idle_timeout
        self._max_requests = max_requests
        self._idle: dict[Host, list[HttpChannel]] = {}  # per host, oldest first
        # One sweep timer per pool, not one timer per idle connection: a timer made and
        # cancelled on every request cost more than the pool saved.
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    def take(self, host: Host) -> HttpChannel | None:
        """An idle, open connection to ``host``, or None (the caller connects a new one)."""
        idle = self._idle.get(host)
        while idle:
            channel = idle.pop()
            channel.on_lost = None
            channel.close_on_eof = False
            if not channel.lost and not channel.eof:
                return channel
            channel.abort()
        return None

    def give_back(self, host: Host, channel: HttpChannel) -> None:
        """After an exchange: keep the connection for the next request, or close it."""
        codec = channel.codec
        reusable = (
            not self.closed
            and not channel.lost
            and not channel.eof
            and codec.our_state is State.DONE
            and codec.their_state is State.DONE
            and (self._max_requests == 0 or channel.exchanges < self._max_requests)
        )
        if not reusable:
            channel.close()
            return
        codec.start_next_cycle()
        channel.idle_since = self._loop.time()
        self._idle.setdefault(host, []).append(channel)
        channel.on_lost = lambda lost: self._forget(host, lost)
        channel.close_on_eof = True
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._idle_timeout, self._close_expired)

    def idle_count(self) -> int:
        return sum(len(channels) for channels in self._idle.values())

    def close_all(self) -> None:
        """A mesh reload retired this cluster: its idle connections go (busy ones finish their
        exchange and are closed on return)."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for host, channels in list(self._idle.items()):
            for channel in list(channels):
                self._forget(host, channel)
                channel.close()

    def _close_expired(self) -> None:
        """Close what idled ``idle_timeout``; come back when the oldest survivor would."""
        self._sweep = None
        now = self._loop.time()
        oldest = None
        for host, channels in list(self._idle.items()):
            while channels and now - channels[0].idle_since >= self._idle_timeout:
                channel = channels[0]
                self._forget(host, channel)
                channel.close()
            if channels and (oldest is None or channels[0].idle_since < oldest):
                oldest = channels[0].idle_since
        if oldest is not None and not self.closed:
            delay = max(oldest + self._idle_timeout - now, 0.001)
            self._sweep = self._loop.call_later(delay, self._close_expired)

    def _forget(self, host: Host, channel: HttpChannel) -> None:
        idle = self._idle.get(host)
        if idle and channel in idle:
            idle.remove(channel)
        channel.on_lost = None
