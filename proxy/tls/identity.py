"""The workload's identity: its certificate chain, key and the mesh root, read from files,
checked as a peer would check them, and turned into the TLS contexts that originate and
terminate mesh mTLS.

Checked before anything is served with them, each failure naming the file: the key is the
certificate's, the chain reaches the root, the certificate is valid now, and its one URI SAN
is a SPIFFE ID of the mesh's trust domain. The contexts speak TLS 1.3 only, ask for and verify
the peer's certificate against the mesh root (the peer's identity is its SPIFFE ID, not a
host name: host-name checks are off), and carry ALPN tokens that say what rides inside, as
Istio's do, so the receiving sidecar knows the protocol without sniffing.

``ssl`` loads a certificate and key only from files, and the files may be replaced while we
read them: the bytes checked here are what is loaded (through a private temporary file), never
the files as they are a moment later.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509

from detour_common import certs
from detour_common.certs import CertificateError
from detour_common.spiffe import SpiffeError, SpiffeId, parse
from proxy.tls.resumption import MeshClientContext

# What rides inside mesh TLS, as Istio's sidecars say it in ALPN (its "istio-*" tokens), so a
# Detour sidecar and an Envoy sidecar under Istio understand each other's choice.
MESH_ALPN: Mapping[str, str] = {
    "http/1.1": "istio-http/1.1",
    "h2": "istio-h2",
    "tcp": "istio",
}
INNER_PROTOCOL: Mapping[str, str] = {token: inner for inner, token in MESH_ALPN.items()}


@dataclass(frozen=True)
class TlsFiles:
    """Where a workload's identity is (Istio's /etc/certs names by default)."""

    cert_chain: Path = Path("/etc/certs/cert-chain.pem")
    private_key: Path = Path("/etc/certs/key.pem")
    root_cert: Path = Path("/etc/certs/root-cert.pem")


@dataclass(frozen=True, eq=False)
class WorkloadIdentity:
    spiffe: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime
    clients: Mapping[str, ssl.SSLContext] = field(repr=False)  # by inner protocol
    server: ssl.SSLContext = field(repr=False)

    def remaining(self, now: datetime) -> float:
        """Seconds until the certificate expires (negative once it has)."""
        return (self.not_after - now).total_seconds()

    def nearly_expired(self, now: datetime) -> bool:
        """Within the last 20% of its lifetime: a renewal is due (Istio's rotation mark)."""
        lifetime = (self.not_after - self.not_before).total_seconds()
        return self.remaining(now) < 0.2 * lifetime


def read_files(files: TlsFiles) -> tuple[bytes, bytes, bytes]:
    """The three files' bytes (chain, key, root); CertificateError naming the one that
    cannot be read."""
    contents = []
    for path in (files.cert_chain, files.private_key, files.root_cert):
        try:
            contents.append(path.read_bytes())
        except OSError as err:
            raise CertificateError(f"{path}: {err.strerror}") from None
    return contents[0], contents[1], contents[2]


def load_identity(files: TlsFiles, trust_domain: str, now: datetime) -> WorkloadIdentity:
    """The identity in ``files``, checked (see the module docstring)."""
    chain_pem, key_pem, root_pem = read_files(files)
    return identity_from(files, chain_pem, key_pem, root_pem, trust_domain, now)


def identity_from(
    files: TlsFiles,
    chain_pem: bytes,
    key_pem: bytes,
    root_pem: bytes,
    trust_domain: str,
    now: datetime,
) -> WorkloadIdentity:
    chain = certs.load_certificates(chain_pem, str(files.cert_chain))
    key = certs.load_private_key(key_pem, str(files.private_key))
    roots = certs.load_certificates(root_pem, str(files.root_cert))
    leaf = chain[0]
    if not certs.key_matches(leaf, key):
        raise CertificateError(f"{files.private_key}: not the key of {files.cert_chain}")
    if not any(certs.chains_to(chain, root) for root in roots):
        raise CertificateError(f"{files.cert_chain}: does not chain to {files.root_cert}")
    if not certs.valid_at(leaf, now):
        raise CertificateError(
            f"{files.cert_chain}: not valid now (valid {certs.not_before(leaf):%Y-%m-%dT%H:%M}"
            f"Z to {certs.not_after(leaf):%Y-%m-%dT%H:%M}Z)"
        )
    spiffe = _own_spiffe_id(leaf, files, trust_domain)
    clients = {
        inner: _context(chain_pem, key_pem, root_pem, server=False, alpn=(token,))
        for inner, token in MESH_ALPN.items()
    }
    server = _context(chain_pem, key_pem, root_pem, server=True, alpn=tuple(MESH_ALPN.values()))
    return WorkloadIdentity(
        spiffe, leaf.serial_number, certs.not_before(leaf), certs.not_after(leaf), clients, server
    )


def _own_spiffe_id(leaf: x509.Certificate, files: TlsFiles, trust_domain: str) -> SpiffeId:
    uris = certs.uri_sans(leaf)
    if len(uris) != 1:
        raise CertificateError(
            f"{files.cert_chain}: a workload certificate has exactly one URI SAN, found {uris}"
        )
    try:
        spiffe = parse(uris[0])
    except SpiffeError as err:
        raise CertificateError(f"{files.cert_chain}: {err}") from None
    if spiffe.trust_domain != trust_domain:
        raise CertificateError(
            f"{files.cert_chain}: {spiffe} is not of trust domain {trust_domain!r}"
        )
    return spiffe


def _context(
    chain_pem: bytes, key_pem: bytes, root_pem: bytes, server: bool, alpn: tuple[str, ...]
) -> ssl.SSLContext:
    context: ssl.SSLContext
    if server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # One ticket per handshake (OpenSSL sends two): a client resumes with the newest.
        # The ticket keys are this context's, so a renewed certificate ends resumption of
        # sessions made with the old one.
        context.num_tickets = 1
    else:
        context = MeshClientContext()  # resumes sessions with peers it verified
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # a mesh peer is its SPIFFE ID, checked after the handshake
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=root_pem.decode("ascii"))
    _load_chain(context, chain_pem, key_pem)
    context.set_alpn_protocols(list(alpn))
    return context


def _load_chain(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` reads files: hand it these very bytes through a private one."""
    with tempfile.TemporaryDirectory(prefix="detour-tls-") as directory:
        path = os.path.join(directory, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key_pem + b"\n" + chain_pem)
        finally:
            os.close(fd)
        context.load_cert_chain(path)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a connection's verified peer certificate says: who (None when its SAN is not
    one SPIFFE ID) and until when."""

    spiffe: SpiffeId | None
    not_after: datetime

    def expired_at(self, now: datetime) -> bool:
        return now > self.not_after


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate | None:
    """The peer's certificate of a connection (of its first handshake when the session was
    resumed: OpenSSL does not verify it again), or None when there is none."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    uris = certs.uri_sans(cert)
    try:
        spiffe = parse(uris[0]) if len(uris) == 1 else None
    except SpiffeError:
        spiffe = None
    return PeerCertificate(spiffe, certs.not_after(cert))


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> SpiffeId | None:
    """The SPIFFE ID of a verified peer's certificate, or None when it has none."""
    peer = peer_certificate(ssl_object)
    return peer.spiffe if peer is not None else None
