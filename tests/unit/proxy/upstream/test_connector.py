"""The one upstream connector on real loopback sockets: what each outcome of a connect counts,
where connections come from, and that its timeout is told apart from other cancellations."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from proxy.config.loader import parse_mesh
from proxy.http.codec import EndOfMessage, Request, Response
from proxy.series import Stats
from proxy.stats import cluster_labels
from proxy.transport.relay import RelayHalf
from proxy.upstream.cluster import ClusterRuntime, build_clusters
from proxy.upstream.connector import (
    ANY_SOURCE,
    UPSTREAM_CX_CONNECT_FAIL,
    UPSTREAM_CX_CONNECT_TIMEOUT,
    UPSTREAM_CX_HTTP1_TOTAL,
    UPSTREAM_CX_POOL_REUSE,
    UPSTREAM_CX_TOTAL,
    ConnectFailed,
    Connector,
    Source,
)

NAME = "test-cluster"


def run(test: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    uvloop.run(_with_loop(test))


async def _with_loop(test: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    await test(asyncio.get_running_loop())


def counted(stats: Stats, counter, name: str = NAME) -> int:
    return stats.counters.get((counter, cluster_labels(name)), 0)


class Recorder(asyncio.Protocol):
    """A server side that remembers who connected."""

    peers: list[tuple[str, int]]

    def __init__(self, peers: list[tuple[str, int]]) -> None:
        self.peers = peers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peers.append(transport.get_extra_info("peername")[:2])


def half() -> RelayHalf:
    return RelayHalf(lambda _half, _exc: None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_on(port: int, stats: Stats) -> ClusterRuntime:
    mesh = parse_mesh(
        f"""
workload: {{name: client, namespace: default}}
services:
  - name: backend
    ports: [{{name: http, port: {port}, protocol: http}}]
    endpoints: [{{address: 127.0.0.1}}]
    traffic_policy:
      connect_timeout: 0.5s
      outlier_detection: {{consecutive_5xx_errors: 1, max_ejection_percent: 100}}
""",
        "mesh.yaml",
    )
    return next(iter(build_clusters(mesh, {}, stats, random.Random(1)).values()))


def test_a_connect_is_counted_and_reaches_the_peer() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        peers: list[tuple[str, int]] = []
        server = await loop.create_server(lambda: Recorder(peers), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stats = Stats()
        protocol = half()
        await Connector(loop, stats).connect(
            protocol, "127.0.0.1", port, timeout=1.0, source=ANY_SOURCE, cluster_name=NAME
        )
        assert protocol.transport is not None and not protocol.lost
        assert counted(stats, UPSTREAM_CX_TOTAL) == 1
        assert counted(stats, UPSTREAM_CX_CONNECT_FAIL) == 0
        protocol.transport.close()
        server.close()

    run(test)


def test_a_bound_source_is_where_the_upstream_sees_the_connection_come_from() -> None:
    """Inbound connections to the app come from 127.0.0.6, so its replies are not captured."""

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        peers: list[tuple[str, int]] = []
        server = await loop.create_server(lambda: Recorder(peers), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        protocol = half()
        await Connector(loop, Stats()).connect(
            protocol, "127.0.0.1", port, timeout=1.0, source=Source("127.0.0.6"), cluster_name=NAME
        )
        for _ in range(100):
            if peers:
                break
            await asyncio.sleep(0.01)
        assert [address for address, _port in peers] == ["127.0.0.6"]
        protocol.transport.close()  # type: ignore[union-attr]
        server.close()

    run(test)


def test_a_refused_connect_fails_counted_and_tells_the_outlier_detector() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        stats = Stats()
        port = free_port()  # nobody listens: the kernel refuses
        cluster = cluster_on(port, stats)
        (host,) = cluster.hosts.hosts
        with pytest.raises(ConnectFailed) as failed:
            await Connector(loop, stats).connect(
                half(),
                host.address,
                port,
                timeout=1.0,
                source=ANY_SOURCE,
                cluster_name=cluster.name,
                cluster=cluster,
                host=host,
            )
        assert not failed.value.timed_out
        assert counted(stats, UPSTREAM_CX_CONNECT_FAIL, cluster.name) == 1
        assert counted(stats, UPSTREAM_CX_CONNECT_TIMEOUT, cluster.name) == 0
        assert host.connect_failures_total == 1
        assert host.ejected  # consecutive_5xx_errors: 1

    run(test)


def test_a_connect_that_does_not_finish_in_time_is_a_timeout() -> None:
    """A listener whose accept queue is full drops new SYNs (tcp_abort_on_overflow is 0):
    the connect neither succeeds nor is refused, as to a blackholed endpoint."""

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(2):  # a backlog of 0 still holds one; the next SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        stats = Stats()
        started = loop.time()
        with pytest.raises(ConnectFailed) as failed:
            await Connector(loop, stats).connect(
                half(), "127.0.0.1", port, timeout=0.3, source=ANY_SOURCE, cluster_name=NAME
            )
        elapsed = loop.time() - started
        assert failed.value.timed_out
        assert 0.25 <= elapsed < 1.0
        assert counted(stats, UPSTREAM_CX_CONNECT_TIMEOUT) == 1
        assert counted(stats, UPSTREAM_CX_CONNECT_FAIL) == 1
        assert asyncio.current_task().cancelling() == 0  # the timer's cancel was taken back
        for sock in (listener, *fillers):
            sock.close()

    run(test)


def test_somebody_elses_cancellation_is_not_taken_for_a_timeout() -> None:
    """A client that leaves cancels its task mid-connect: that cancellation goes on up,
    nothing is counted as a failed connect."""

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(2)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        await asyncio.sleep(0.05)
        stats = Stats()
        dial = loop.create_task(
            Connector(loop, stats).connect(
                half(), "127.0.0.1", port, timeout=5.0, source=ANY_SOURCE, cluster_name=NAME
            )
        )
        await asyncio.sleep(0.1)
        dial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dial
        assert counted(stats, UPSTREAM_CX_CONNECT_FAIL) == 0
        for sock in (listener, *fillers):
            sock.close()

    run(test)


class Answerer(asyncio.Protocol):
    """Answers each request head with an empty 200."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # type: ignore[attr-defined]


def test_http1_connections_are_made_once_and_then_pooled() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        server = await loop.create_server(Answerer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stats = Stats()
        cluster = cluster_on(port, stats)
        (host,) = cluster.hosts.hosts
        connector = Connector(loop, stats)
        assert connector.pooled_http1(cluster, host) is None
        channel = await connector.new_http1(cluster, host, ANY_SOURCE)
        assert counted(stats, UPSTREAM_CX_HTTP1_TOTAL, cluster.name) == 1
        assert counted(stats, UPSTREAM_CX_TOTAL, cluster.name) == 1
        assert host.connections_total == 1  # the outlier detector's view
        channel.write(channel.codec.send(Request(b"GET", b"/", [(b"host", b"backend")])))
        channel.write(channel.codec.send(EndOfMessage()))
        assert type(await channel.next_event()) is Response
        assert type(await channel.next_event()) is EndOfMessage
        cluster.http_pool(loop).give_back(host, channel)
        assert connector.pooled_http1(cluster, host) is channel
        assert counted(stats, UPSTREAM_CX_POOL_REUSE, cluster.name) == 1
        assert counted(stats, UPSTREAM_CX_TOTAL, cluster.name) == 1  # no new connection
        channel.close()
        server.close()

    run(test)
