"""The L4 relay over a mesh TLS connection: the peer's close_notify ends the connection
cleanly, and the relay does not ask the TLS transport for a half-close it cannot do (asyncio
and uvloop would log a warning for each such connection: noise in every sidecar's log)."""

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
from proxy.transport.relay import RelayHalf

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
