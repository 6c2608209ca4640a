"""The CA's files and ``detour-ca``: keys 0600 from their first byte, Istio's file names, a
round trip through the directory, and clear errors that write nothing."""

from __future__ import annotations

import os
import ssl
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ca.authority import create_root, issue
from ca.cli import main
from ca.store import load_authority, save_authority, save_workload
from detour_common import certs

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_0600_and_certificates_0644(tmp_path: Path) -> None:
    authority = create_root("cluster.local", NOW)
    save_authority(tmp_path / "ca", authority)
    save_workload(tmp_path / "w", issue(authority, "default", "client", NOW))
    assert mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert mode(tmp_path / "w" / "key.pem") == 0o600
    assert mode(tmp_path / "w" / "cert-chain.pem") == 0o644
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "cert-chain.pem",
        "key.pem",
        "root-cert.pem",
    ]


def test_a_saved_authority_loads_back_and_keeps_issuing(tmp_path: Path) -> None:
    authority = create_root("corp.example", NOW)
    save_authority(tmp_path, authority)
    loaded = load_authority(tmp_path, NOW)
    assert (loaded.trust_domain, loaded.root) == ("corp.example", authority.root)
    chain = certs.load_certificates(issue(loaded, "a", "b", NOW).cert_chain, "chain")
    assert certs.chains_to(chain, authority.root)


def test_the_cli_makes_a_ca_and_issues_what_a_tls_handshake_accepts(tmp_path: Path) -> None:
    """Issued files work as they are with OpenSSL (Python's ssl): mutual TLS between two
    workloads of the same root succeeds, each side sees the other's SPIFFE ID."""
    now = datetime.now(UTC)
    assert main(["init", "--dir", str(tmp_path / "ca")], now) == 0
    for name in ("client", "server"):
        argv = ["issue", "--dir", str(tmp_path / "ca"), "--namespace", "default"]
        argv += ["--service-account", name, "--out", str(tmp_path / name)]
        assert main(argv, now) == 0
    seen = handshake(tmp_path / "client", tmp_path / "server")
    assert seen == ("spiffe://cluster.local/ns/default/sa/server",
                    "spiffe://cluster.local/ns/default/sa/client")  # fmt: skip


def test_a_certificate_from_another_root_fails_the_handshake(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    for ca in ("ca1", "ca2"):
        assert main(["init", "--dir", str(tmp_path / ca)], now) == 0
    for ca, name in (("ca1", "client"), ("ca2", "server")):
        argv = ["issue", "--dir", str(tmp_path / ca), "--namespace", "default"]
        argv += ["--service-account", name, "--out", str(tmp_path / name)]
        assert main(argv, now) == 0
    with pytest.raises(ssl.SSLError):
        handshake(tmp_path / "client", tmp_path / "server")


def context(files: Path, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files / "cert-chain.pem", files / "key.pem")
    ctx.load_verify_locations(files / "root-cert.pem")
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def handshake(client_files: Path, server_files: Path) -> tuple[str, str]:
    """TLS 1.3 over a socket pair; (what the client saw, what the server saw) as URI SANs."""
    import socket

    from cryptography import x509

    def peer_uri(tls: ssl.SSLSocket) -> str:
        der = tls.getpeercert(binary_form=True)
        return certs.uri_sans(x509.load_der_x509_certificate(der))[0]

    left, right = socket.socketpair()
    server_seen: list[object] = []

    def serve() -> None:
        try:
            with context(server_files, True).wrap_socket(right, server_side=True) as tls:
                server_seen.append(peer_uri(tls))
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            server_seen.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with context(client_files, False).wrap_socket(left) as tls:
            client_saw = peer_uri(tls)
            tls.sendall(b"x")
    finally:
        thread.join(5)
    assert isinstance(server_seen[0], str), server_seen
    return client_saw, server_seen[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["init", "--dir", "{d}/ca", "--trust-domain", "Bad_Domain"], "trust domain 'Bad_Domain'"),
        (
            [
                "issue",
                "--dir",
                "{d}/nothing",
                "--namespace",
                "a",
                "--service-account",
                "b",
                "--out",
                "{d}/w",
            ],
            "root-cert.pem",
        ),
        (["init", "--dir", "{d}/ca", "--root-cert", "{d}/r.pem"], "go together"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(tmp_path: Path, capsys, argv, message) -> None:
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert main(argv, NOW) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ca").exists() and not (tmp_path / "w").exists()


def test_a_bad_lifetime_is_refused_by_the_parser(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["issue", "--dir", str(tmp_path), "--namespace", "a", "--service-account", "b",
              "--out", str(tmp_path / "w"), "--ttl", "one day"])  # fmt: skip
    assert exited.value.code == 2
    assert "'one day'" in capsys.readouterr().err


def test_the_key_file_belongs_to_the_owner_given(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the suite runs as root (CI): chown needs it")
    authority = create_root("cluster.local", NOW)
    save_workload(tmp_path, issue(authority, "default", "client", NOW), owner=(1337, 1337))
    info = (tmp_path / "key.pem").stat()
    assert (info.st_uid, info.st_gid, mode(tmp_path / "key.pem")) == (1337, 1337, 0o600)
