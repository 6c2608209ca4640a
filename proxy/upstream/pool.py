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
        self._idle: dict[Host, list[HttpChannel]] = {}
        self._timers: dict[HttpChannel, asyncio.TimerHandle] = {}
        self.closed = False

    def take(self, host: Host) -> HttpChannel | None:
        """An idle, open connection to ``host``, or None (the caller connects a new one)."""
        idle = self._idle.get(host)
        while idle:
            channel = idle.pop()
            self._timers.pop(channel).cancel()
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
        self._idle.setdefault(host, []).append(channel)
        self._timers[channel] = self._loop.call_later(
            self._idle_timeout, self._expire, host, channel
        )
        channel.on_lost = lambda lost: self._forget(host, lost)
        channel.close_on_eof = True

    def idle_count(self) -> int:
        return sum(len(channels) for channels in self._idle.values())

    def close_all(self) -> None:
        """A mesh reload retired this cluster: its idle connections go (busy ones finish their
        exchange and are closed on return)."""
        self.closed = True
        for host, channels in list(self._idle.items()):
            for channel in list(channels):
                self._forget(host, channel)
                channel.close()

    def _expire(self, host: Host, channel: HttpChannel) -> None:
        self._forget(host, channel)
        channel.close()

    def _forget(self, host: Host, channel: HttpChannel) -> None:
        idle = self._idle.get(host)
        if idle and channel in idle:
            idle.remove(channel)
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        channel.on_lost = None
