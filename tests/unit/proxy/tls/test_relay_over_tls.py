"""The L4 relay over a mesh TLS connection: the peer's close_notify ends the connection
cleanly, the relay does not ask the TLS transport for a half-close it cannot do (asyncio
and uvloop would log a warning for each such connection: noise in every sidecar's log), and
an EOF that cannot cross to the TLS side closes it once it is quiet."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvloop

from ca.authority import create_root, issue
from ca.store import save_workload
from proxy.tls.identity import TlsFiles, load_identity
from proxy.transport import relay
from proxy.transport.relay import RelayHalf, link

NOW = datetime.now(UTC)


def identity(root: Path, name: str):
    files = TlsFiles(
        root / name / "cert-chain.pem", root / name / "key.pem", root / name / "root-cert.pem"
    )
    return load_identity(files, "cluster.local", NOW)


@pytest.mark.parametrize("runner", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_a_tls_peers_close_notify_ends_the_relay_half_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, runner
) -> None:
    authority = create_root("cluster.local", NOW)
    for name in ("client", "server"):
        save_workload(tmp_path / name, issue(authority, "default", name, NOW))
    client, server = identity(tmp_path, "client"), identity(tmp_path, "server")
    lost: list[Exception | None] = []

    async def scenario() -> RelayHalf:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        half = RelayHalf(lambda _half, exc: (lost.append(exc), done.set_result(None)))
        listener = await loop.create_server(lambda: half, "127.0.0.1", 0, ssl=server.server)
        port = listener.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client.clients["tcp"], server_hostname=None
        )
        writer.write(b"early")
        await writer.drain()
        writer.close()  # TLS close_notify, then the TCP close
        await asyncio.wait_for(done, 10)
        listener.close()
        return half

    with caplog.at_level(logging.WARNING):
        half = runner(scenario())
    assert half.eof and half.lost and lost == [None]
    assert b"".join(half.early) == b"early"
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()], caplog.text


async def relayed_over_tls(
    client, server, app
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """plaintext client → RelayHalf → RelayHalf →TLS→ ``app`` (a TLS stream handler): the
    client sidecar's relay of an opaque TCP port to a meshed endpoint."""
    loop = asyncio.get_running_loop()
    joining: set[asyncio.Task[None]] = set()
    tls_listener = await asyncio.start_server(app, "127.0.0.1", 0, ssl=server.server)
    tls_port = tls_listener.sockets[0].getsockname()[1]

    def downstream() -> RelayHalf:
        half = RelayHalf(lambda _half, _exc: None)

        async def join() -> None:
            upstream = RelayHalf(lambda _half, _exc: None)
            await loop.create_connection(
                lambda: upstream, "127.0.0.1", tls_port, ssl=client.clients["tcp"]
            )
            link(half, upstream)

        task = loop.create_task(join())
        joining.add(task)
        task.add_done_callback(joining.discard)
        return half

    plain = await loop.create_server(downstream, "127.0.0.1", 0)
    return await asyncio.open_connection("127.0.0.1", plain.sockets[0].getsockname()[1])


@pytest.fixture
def pair(tmp_path: Path):
    authority = create_root("cluster.local", NOW)
    for name in ("client", "server"):
        save_workload(tmp_path / name, issue(authority, "default", name, NOW))
    return identity(tmp_path, "client"), identity(tmp_path, "server")


def test_a_clients_eof_closes_a_quiet_tls_side_after_the_linger(pair, monkeypatch) -> None:
    """The client sends and closes; the server app says nothing and keeps its connection (a
    keep-alive server waiting for the next request): without the linger both connections
    would stay open until the server closed. The app sees the end, the client its close."""
    monkeypatch.setattr(relay, "HALF_CLOSE_LINGER", 0.2)

    async def scenario() -> tuple[bytes, bytes]:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read())  # until the connection ends
            writer.close()

        reader, writer = await relayed_over_tls(*pair, app)
        writer.write(b"request")
        writer.write_eof()
        seen_by_app = await asyncio.wait_for(got, 5)
        return seen_by_app, await asyncio.wait_for(reader.read(), 5)

    assert uvloop.run(scenario()) == (b"request", b"")


def test_an_answer_that_keeps_coming_after_the_clients_eof_is_delivered_whole(
    pair, monkeypatch
) -> None:
    """A client that shut its write side and waits: the server answers in pieces, each within
    the linger of the previous one, for longer than the linger in all; the client gets it all
    (and then the close, once the server is quiet)."""
    monkeypatch.setattr(relay, "HALF_CLOSE_LINGER", 0.3)
    pieces = [b"piece%d;" % n for n in range(6)]

    async def scenario() -> bytes:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(7)
            for piece in pieces:  # 6 pieces 0.1 s apart: twice the linger
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.1)
            await reader.read()  # stays open until the relay closes it
            writer.close()

        reader, writer = await relayed_over_tls(*pair, app)
        writer.write(b"request")
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)

    assert uvloop.run(scenario()) == b"".join(pieces)
