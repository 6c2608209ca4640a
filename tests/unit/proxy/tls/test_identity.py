"""The workload identity in the sidecar: files checked as a peer would, TLS contexts that
authenticate both ends to the mesh root, and reloads that never leave a bad identity in use."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.authority import create_root, issue
from ca.store import save_workload
from detour_common.certs import CertificateError
from proxy.series import Stats
from proxy.tls.identity import INNER_PROTOCOL, TlsFiles, load_identity, peer_identity
from proxy.tls.watch import CERT_EXPIRY, CERT_REJECTED, CERT_RELOADED, IdentitySource

NOW = datetime.now(UTC)


def files_in(directory: Path) -> TlsFiles:
    return TlsFiles(
        directory / "cert-chain.pem", directory / "key.pem", directory / "root-cert.pem"
    )


@pytest.fixture
def mesh(tmp_path: Path):
    """A root and two workloads' files: client and server."""
    authority = create_root("cluster.local", NOW)
    for name in ("client", "server"):
        save_workload(tmp_path / name, issue(authority, "default", name, NOW))
    return authority, tmp_path


def test_a_good_identity_loads_with_its_spiffe_id(mesh) -> None:
    _authority, root = mesh
    identity = load_identity(files_in(root / "client"), "cluster.local", NOW)
    assert str(identity.spiffe) == "spiffe://cluster.local/ns/default/sa/client"
    assert identity.remaining(NOW) == pytest.approx(24 * 3600, abs=5)
    assert set(identity.clients) == {"http/1.1", "h2", "tcp"}


def test_both_ends_authenticate_and_say_what_rides_inside(mesh) -> None:
    """A real TLS 1.3 handshake on loopback with the two contexts: each side sees the other's
    SPIFFE ID, and the server learns the inner protocol from ALPN."""
    _authority, root = mesh
    client = load_identity(files_in(root / "client"), "cluster.local", NOW)
    server = load_identity(files_in(root / "server"), "cluster.local", NOW)

    async def exchange() -> tuple[str, str, str]:
        seen: dict[str, str] = {}

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ssl_object = writer.get_extra_info("ssl_object")
            seen["peer"] = str(peer_identity(ssl_object))
            seen["alpn"] = ssl_object.selected_alpn_protocol()
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server.server)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client.clients["h2"], server_hostname=None
        )
        their = str(peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        listener.close()
        return their, seen["peer"], seen["alpn"]

    their, mine, alpn = asyncio.run(exchange())
    assert their == "spiffe://cluster.local/ns/default/sa/server"
    assert mine == "spiffe://cluster.local/ns/default/sa/client"
    assert INNER_PROTOCOL[alpn] == "h2"


def test_a_peer_from_another_root_is_refused_by_the_handshake(mesh, tmp_path: Path) -> None:
    _authority, root = mesh
    save_workload(tmp_path / "stranger", issue(create_root("cluster.local", NOW), "x", "y", NOW))
    stranger = load_identity(files_in(tmp_path / "stranger"), "cluster.local", NOW)
    server = load_identity(files_in(root / "server"), "cluster.local", NOW)

    async def attempt() -> None:
        async def serve(_reader, writer) -> None:
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server.server)
        port = listener.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=stranger.clients["tcp"], server_hostname=None
            )
            writer.close()
        finally:
            listener.close()

    with pytest.raises(OSError):  # ssl.SSLCertVerificationError is an OSError
        asyncio.run(attempt())


def write_bad(directory: Path, name: str, data: bytes) -> None:
    (directory / name).write_bytes(data)


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        ("other-key", "key.pem: not the key of"),
        ("other-root", "cert-chain.pem: does not chain to"),
        ("missing-key", "key.pem: No such file"),
        ("garbage-chain", "cert-chain.pem: not PEM certificates"),
    ],
)
def test_a_bad_identity_is_refused_naming_the_file(mesh, spoil, named) -> None:
    _authority, root = mesh
    target = root / "client"
    other = issue(create_root("cluster.local", NOW), "default", "client", NOW)
    if spoil == "other-key":
        write_bad(target, "key.pem", other.key)
    elif spoil == "other-root":
        write_bad(target, "root-cert.pem", other.root)
    elif spoil == "missing-key":
        os.unlink(target / "key.pem")
    else:
        write_bad(target, "cert-chain.pem", b"not a certificate")
    with pytest.raises(CertificateError, match=named):
        load_identity(files_in(target), "cluster.local", NOW)


def test_an_expired_or_foreign_certificate_is_refused(mesh) -> None:
    _authority, root = mesh
    with pytest.raises(CertificateError, match="not valid now"):
        load_identity(files_in(root / "client"), "cluster.local", NOW + timedelta(days=2))
    with pytest.raises(CertificateError, match=r"not of trust domain 'corp\.example'"):
        load_identity(files_in(root / "client"), "corp.example", NOW)


def test_a_renewed_certificate_is_used_and_a_bad_one_never(mesh) -> None:
    authority, root = mesh
    target = root / "client"
    stats = Stats()
    source = IdentitySource(files_in(target), "cluster.local", stats)
    first = source.load()
    assert not source.check()  # nothing changed
    save_workload(target, issue(authority, "default", "client", NOW))
    assert source.check()
    renewed = source.current
    assert renewed is not None and renewed.serial != first.serial
    write_bad(target, "key.pem", issue(authority, "default", "client", NOW).key)  # mismatch
    assert not source.check() and not source.check()
    assert source.current is renewed  # the identity in use stayed
    assert stats.counters[(CERT_RELOADED, ())] == 1
    assert stats.counters[(CERT_REJECTED, ())] == 2  # looked at again: still refused
    assert 23 * 3600 < stats.gauges[(CERT_EXPIRY, ())] <= 24 * 3600


def test_a_certificate_in_its_last_fifth_is_nearly_expired(mesh) -> None:
    _authority, root = mesh
    identity = load_identity(files_in(root / "client"), "cluster.local", NOW)
    assert not identity.nearly_expired(NOW + timedelta(hours=19))
    assert identity.nearly_expired(NOW + timedelta(hours=19, minutes=13))
