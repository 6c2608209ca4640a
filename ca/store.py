"""The CA's files and a workload's, on disk.

The CA directory uses Istio's "plugged-in CA" names, so an operator's existing ``cacerts``
works as it is: ``root-cert.pem``, ``ca-cert.pem`` (the signing certificate), ``ca-key.pem``
(0600), ``cert-chain.pem`` (the signing certificate and any intermediates, not the root), plus
``trust-domain``. A workload's directory uses the names Istio mounts at ``/etc/certs``:
``cert-chain.pem``, ``key.pem`` (0600), ``root-cert.pem``.

Every file is written whole to a temporary name and renamed into place, so a sidecar watching
the directory never reads half a certificate, and a key file is 0600 from its first byte.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ca.authority import Authority, Issued, brought_authority, key_pem, pem
from detour_common import certs
from detour_common.certs import CertificateError

ROOT_CERT = "root-cert.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
TRUST_DOMAIN = "trust-domain"
WORKLOAD_KEY = "key.pem"
PUBLIC, SECRET = 0o644, 0o600


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """``data`` at ``path``, atomically, with ``mode`` from the start (and ``owner``)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not narrow it, and a leftover file is reset
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def save_authority(directory: Path, authority: Authority) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / ROOT_CERT, pem(authority.root), PUBLIC)
    write_file(directory / CA_CERT, pem(authority.signing_cert), PUBLIC)
    write_file(directory / CERT_CHAIN, b"".join(pem(c) for c in authority.chain), PUBLIC)
    write_file(directory / TRUST_DOMAIN, authority.trust_domain.encode() + b"\n", PUBLIC)
    write_file(directory / CA_KEY, key_pem(authority.signing_key), SECRET)


def load_authority(directory: Path, now: datetime) -> Authority:
    """The CA in ``directory``, checked as an operator's would be (``brought_authority``)."""

    def read(name: str) -> bytes:
        try:
            return (directory / name).read_bytes()
        except OSError as err:
            raise CertificateError(f"{directory / name}: {err.strerror}") from None

    root = certs.load_certificates(read(ROOT_CERT), str(directory / ROOT_CERT))[0]
    signing = certs.load_certificates(read(CA_CERT), str(directory / CA_CERT))[0]
    key = certs.load_private_key(read(CA_KEY), str(directory / CA_KEY))
    chain = tuple(certs.load_certificates(read(CERT_CHAIN), str(directory / CERT_CHAIN)))
    intermediates = tuple(c for c in chain if c != signing)
    trust_domain = read(TRUST_DOMAIN).decode().strip()
    return brought_authority(trust_domain, root, signing, key, intermediates, now)


def save_workload(directory: Path, issued: Issued, owner: tuple[int, int] | None = None) -> None:
    """The three files a sidecar loads; the key readable by ``owner`` only (uid 1337)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / ROOT_CERT, issued.root, PUBLIC, owner)
    write_file(directory / CERT_CHAIN, issued.cert_chain, PUBLIC, owner)
    write_file(directory / WORKLOAD_KEY, issued.key, SECRET, owner)
