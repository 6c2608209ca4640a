"""TLS session resumption between sidecars: the cache's rules (pure, with stand-in sessions and
a fake clock) and real TLS 1.3 connections through the connector on loopback, where the
second connection to a verified peer resumes and one to a peer that failed never does."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvloop

from ca.authority import create_root, issue
from ca.store import save_workload
from proxy.series import Stats
from proxy.stats import cluster_labels
from proxy.tls.identity import TlsFiles, WorkloadIdentity, load_identity
from proxy.tls.resumption import MeshClientContext, SessionCache
from proxy.transport.relay import RelayHalf
from proxy.upstream.connector import (
    ANY_SOURCE,
    SSL_FAIL_VERIFY_SAN,
    SSL_HANDSHAKE,
    SSL_SESSION_REUSED,
    ConnectFailed,
    Connector,
    MeshTls,
)

NOW = datetime.now(UTC)
CLUSTER = "outbound|8080||backend"
BACKEND = "spiffe://cluster.local/ns/default/sa/backend"


# --- the cache, pure ---------------------------------------------------------------------


@dataclass
class FakeSession:
    has_ticket: bool = True
    time: int = 1000
    timeout: int = 7200


@dataclass
class FakeConnection:
    session: FakeSession | None


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cache_with(session: FakeSession | None, not_after: float = 5000.0, clock=None):
    cache = SessionCache(capacity=4, clock=clock or Clock())
    cache.connecting("10.0.0.1", FakeConnection(session))  # type: ignore[arg-type]
    cache.verified("10.0.0.1", not_after)
    return cache


def test_a_verified_peers_ticketed_session_is_offered() -> None:
    session = FakeSession()
    assert cache_with(session).session_for("10.0.0.1") is session


def test_nothing_is_offered_to_a_peer_never_met_or_before_its_ticket_came() -> None:
    assert SessionCache().session_for("10.0.0.1") is None
    assert cache_with(FakeSession(has_ticket=False)).session_for("10.0.0.1") is None
    assert cache_with(None).session_for("10.0.0.1") is None


def test_a_peer_connected_but_not_verified_is_not_resumed() -> None:
    cache = SessionCache(clock=Clock())
    cache.connecting("10.0.0.1", FakeConnection(FakeSession()))  # type: ignore[arg-type]
    assert cache.session_for("10.0.0.1") is None


def test_no_session_once_the_peers_certificate_or_the_session_expired() -> None:
    clock = Clock(1000.0)
    cache = cache_with(FakeSession(time=1000, timeout=7200), not_after=2000.0, clock=clock)
    clock.now = 2000.0  # the certificate's expiry: the session carries that certificate
    assert cache.session_for("10.0.0.1") is None
    clock = Clock(8199.0)
    cache = cache_with(FakeSession(time=1000, timeout=7200), not_after=1e9, clock=clock)
    assert cache.session_for("10.0.0.1") is not None
    clock.now = 8200.0  # time + timeout: OpenSSL's lifetime of the session
    assert cache.session_for("10.0.0.1") is None


def test_the_newest_connections_ticket_replaces_the_older_one() -> None:
    older, newer = FakeSession(), FakeSession()
    cache = cache_with(older)
    assert cache.session_for("10.0.0.1") is older
    cache.connecting("10.0.0.1", FakeConnection(newer))  # type: ignore[arg-type]
    assert cache.session_for("10.0.0.1") is newer
    # A connection whose ticket has not come yet keeps the one we have.
    cache.connecting("10.0.0.1", FakeConnection(FakeSession(has_ticket=False)))  # type: ignore[arg-type]
    assert cache.session_for("10.0.0.1") is newer


def test_a_forgotten_peer_and_the_least_recent_beyond_capacity_are_gone() -> None:
    cache = cache_with(FakeSession())
    cache.forget("10.0.0.1")
    assert cache.session_for("10.0.0.1") is None and len(cache) == 0
    for n in range(6):
        cache.connecting(f"10.0.0.{n}", FakeConnection(FakeSession()))  # type: ignore[arg-type]
    assert len(cache) == 4
    assert "10.0.0.0" not in cache._peers and "10.0.0.5" in cache._peers


# --- real connections through the connector ----------------------------------------------


def files_in(directory: Path) -> TlsFiles:
    return TlsFiles(
        directory / "cert-chain.pem", directory / "key.pem", directory / "root-cert.pem"
    )


@pytest.fixture
def identities(tmp_path: Path) -> dict[str, WorkloadIdentity]:
    authority = create_root("cluster.local", NOW)
    for name in ("client", "backend"):
        save_workload(tmp_path / name, issue(authority, "default", name, NOW))
    return {
        name: load_identity(files_in(tmp_path / name), "cluster.local", NOW)
        for name in ("client", "backend")
    }


class Server:
    """A TLS server on loopback with the backend's mesh context: it records, per
    connection, whether the session was resumed and the client it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bytes]] = []

    def protocol(self) -> asyncio.Protocol:
        server = self

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                ssl_object = transport.get_extra_info("ssl_object")
                server.seen.append((ssl_object.session_reused, ssl_object.getpeercert(True)))
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)  # type: ignore[attr-defined]

        return Echo()


async def serve(identity: WorkloadIdentity) -> tuple[Server, asyncio.AbstractServer, int]:
    """A recording TLS server on loopback with ``identity``'s server context."""
    server = Server()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server.protocol, "127.0.0.1", 0, ssl=identity.server)
    return server, listener, listener.sockets[0].getsockname()[1]


async def connect_and_echo(connector: Connector, port: int, tls: MeshTls) -> RelayHalf:
    """One connection through the connector; one byte there and back, so the server's
    ticket (sent after the handshake) has been read, as on any connection that carried
    something."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Reader(RelayHalf):
        def data_received(self, data: bytes) -> None:
            if not received.done():
                received.set_result(data)

    half = Reader(lambda _half, _exc: None)
    await connector.connect(
        half, "127.0.0.1", port, timeout=2.0, source=ANY_SOURCE, cluster_name=CLUSTER, tls=tls
    )
    half.transport.write(b"x")  # type: ignore[union-attr]
    assert await asyncio.wait_for(received, 2.0) == b"x"
    half.transport.close()  # type: ignore[union-attr]
    return half


def counted(stats: Stats, counter) -> int:
    return stats.counters.get((counter, cluster_labels(CLUSTER)), 0)


def test_the_second_connection_to_a_verified_peer_resumes_its_session(identities) -> None:
    async def scenario() -> None:
        server, listener, port = await serve(identities["backend"])
        loop = asyncio.get_running_loop()
        stats = Stats()
        connector = Connector(loop, stats)
        tls = MeshTls(identities["client"].clients["tcp"], BACKEND)
        first = await connect_and_echo(connector, port, tls)
        second = await connect_and_echo(connector, port, tls)
        listener.close()
        assert [reused for reused, _ in server.seen] == [False, True]
        # Both sides still know who the other is on the resumed connection.
        assert second.peer_principal == first.peer_principal == BACKEND
        assert server.seen[1][1] == server.seen[0][1] != b""
        assert counted(stats, SSL_HANDSHAKE) == 2
        assert counted(stats, SSL_SESSION_REUSED) == 1

    uvloop.run(scenario())


def test_a_renewed_identity_starts_with_full_handshakes(identities, tmp_path: Path) -> None:
    """New certificates make new contexts, and a session belongs to its context."""

    async def scenario() -> None:
        server, listener, port = await serve(identities["backend"])
        loop = asyncio.get_running_loop()
        connector = Connector(loop, Stats())
        old = MeshTls(identities["client"].clients["tcp"], BACKEND)
        await connect_and_echo(connector, port, old)
        renewed = load_identity(files_in(tmp_path / "client"), "cluster.local", NOW)
        await connect_and_echo(connector, port, MeshTls(renewed.clients["tcp"], BACKEND))
        listener.close()
        assert [reused for reused, _ in server.seen] == [False, False]

    uvloop.run(scenario())


def test_a_peer_that_is_not_who_the_endpoint_runs_as_is_never_resumed(identities) -> None:
    async def scenario() -> None:
        server, listener, port = await serve(identities["backend"])
        loop = asyncio.get_running_loop()
        stats = Stats()
        connector = Connector(loop, stats)
        context = identities["client"].clients["tcp"]
        wrong = MeshTls(context, "spiffe://cluster.local/ns/default/sa/payments")
        for _ in range(2):
            with pytest.raises(ConnectFailed):
                await connect_and_echo(connector, port, wrong)
        assert counted(stats, SSL_FAIL_VERIFY_SAN) == 2
        assert isinstance(context, MeshClientContext) and len(context.sessions) == 0
        # What the refused peer gave is not offered to it again: a full handshake.
        await connect_and_echo(connector, port, MeshTls(context, BACKEND))
        listener.close()
        assert server.seen[-1][0] is False
        assert counted(stats, SSL_SESSION_REUSED) == 0

    uvloop.run(scenario())


def test_server_contexts_send_one_ticket_and_client_contexts_resume(identities) -> None:
    identity = identities["client"]
    assert identity.server.num_tickets == 1
    assert all(isinstance(c, MeshClientContext) for c in identity.clients.values())
    assert all(c.minimum_version == ssl.TLSVersion.TLSv1_3 for c in identity.clients.values())
