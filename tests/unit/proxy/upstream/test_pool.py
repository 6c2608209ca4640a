"""The keep-alive pool on real loopback sockets: reuse, idle expiry, peer close, limits."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import ClassVar

import uvloop

from proxy.config.model import Endpoint
from proxy.http.channel import HttpChannel
from proxy.http.codec import Connection, EndOfMessage, Request, Response
from proxy.upstream.hosts import Host
from proxy.upstream.pool import UpstreamPool

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server(asyncio.Protocol):
    """Answers every request head with RESPONSE; remembers its transports."""

    transports: ClassVar[list[asyncio.Transport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Server.transports.append(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(RESPONSE)


async def exchange(loop, port: int, channel: HttpChannel | None = None) -> HttpChannel:
    """One request/response on ``channel`` (or a new connection), leaving it reusable."""
    if channel is None:
        channel = HttpChannel(Connection("client"), loop)
        await loop.create_connection(lambda: channel, "127.0.0.1", port)
    channel.write(channel.codec.send(Request(b"GET", b"/", [(b"host", b"h")])))
    channel.write(channel.codec.send(EndOfMessage()))
    channel.flush()
    channel.exchanges += 1
    assert type(await channel.next_event()) is Response
    while type(await channel.next_event()) is not EndOfMessage:
        pass
    return channel


def run(test) -> None:
    Server.transports = []
    uvloop.run(test())


async def started(loop) -> tuple[asyncio.AbstractServer, int]:
    server = await loop.create_server(Server, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


HOST = Host(Endpoint(ipaddress.ip_address("127.0.0.1")), 0)


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_connection_given_back_is_taken_again_most_recent_first() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        server, port = await started(loop)
        pool = UpstreamPool(loop, idle_timeout=60, max_requests=0)
        first = await exchange(loop, port)
        second = await exchange(loop, port)
        pool.give_back(HOST, first)
        pool.give_back(HOST, second)
        assert pool.take(HOST) is second
        assert pool.take(HOST) is first
        assert pool.take(HOST) is None
        await exchange(loop, port, first)  # still usable after the cycle reset
        server.close()

    run(test)


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    """Each connection is closed once it idled ``idle_timeout`` — never before, whatever else
    the machine does (a busy loop only makes the sweep later) — and an older one no later
    than a younger one."""

    async def test() -> None:
        loop = asyncio.get_running_loop()
        server, port = await started(loop)
        pool = UpstreamPool(loop, idle_timeout=0.2, max_requests=0)
        channels = [await exchange(loop, port) for _ in range(3)]
        given_back: dict[int, float] = {}
        closed: dict[int, float] = {}

        async def watch() -> None:
            """When each connection starts closing, seen within a millisecond (the pool is
            compiled: its calls to ``close`` cannot be intercepted)."""
            while len(closed) < len(channels):
                for index, channel in enumerate(channels):
                    transport = channel.transport
                    if index not in closed and transport is not None and transport.is_closing():
                        closed[index] = loop.time()
                await asyncio.sleep(0.001)

        watcher = loop.create_task(watch())
        for index in (0, 1):
            pool.give_back(HOST, channels[index])
            given_back[index] = loop.time()
        await asyncio.sleep(0.1)
        pool.give_back(HOST, channels[2])  # idles 0.1 s less than the others
        given_back[2] = loop.time()
        await until(lambda: len(closed) == 3 and all(c.lost for c in channels))
        await watcher
        assert pool.idle_count() == 0
        for index in range(3):
            assert closed[index] - given_back[index] >= 0.2 - 1e-3, (index, closed, given_back)
        assert closed[0] <= closed[2] and closed[1] <= closed[2]
        server.close()

    run(test)


def test_a_connection_the_peer_closes_while_idle_leaves_the_pool() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        server, port = await started(loop)
        pool = UpstreamPool(loop, idle_timeout=60, max_requests=0)
        channel = await exchange(loop, port)
        pool.give_back(HOST, channel)
        Server.transports[0].close()  # the upstream's keep-alive timeout, say
        await until(lambda: pool.idle_count() == 0)
        assert pool.take(HOST) is None
        server.close()

    run(test)


def test_max_requests_per_connection_and_a_retired_pool_close_on_return() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        server, port = await started(loop)
        pool = UpstreamPool(loop, idle_timeout=60, max_requests=2)
        channel = await exchange(loop, port)
        pool.give_back(HOST, channel)
        channel = await exchange(loop, port, pool.take(HOST))  # its second exchange
        pool.give_back(HOST, channel)
        assert pool.idle_count() == 0
        await until(lambda: channel.lost)
        other = await exchange(loop, port)
        pool.close_all()
        pool.give_back(HOST, other)
        assert pool.idle_count() == 0
        await until(lambda: other.lost)
        server.close()

    run(test)
