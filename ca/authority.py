"""The mesh CA: a root (made here, or brought by the operator with an intermediate that signs)
and the short-lived workload certificates it issues.

A workload certificate is what Istio's CA issues: an empty subject, one URI SAN — the SPIFFE
ID ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>`` — marked critical (RFC 5280
§4.2.1.6 requires it with an empty subject), digitalSignature + keyEncipherment, usable as a
TLS server and client, ECDSA P-256, 24 hours by default and never past its issuer. The
functions are pure but for the fresh keys and serial numbers: the time is passed in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from detour_common import certs
from detour_common.certs import CertificateError, PrivateKey
from detour_common.spiffe import SCHEME, SpiffeId, check_trust_domain

DEFAULT_ROOT_VALIDITY = timedelta(days=3650)
DEFAULT_WORKLOAD_TTL = timedelta(hours=24)
MAX_WORKLOAD_TTL = timedelta(days=90)
CLOCK_SKEW = timedelta(minutes=1)  # not_before in the past: peers' clocks differ a little


@dataclass(frozen=True)
class Authority:
    """What signs workload certificates: the signing certificate and key, the certificates
    between it and the root (the signing one first, the root excluded: what a workload sends
    with its own certificate), the root, and the trust domain."""

    trust_domain: str
    signing_cert: x509.Certificate
    signing_key: PrivateKey = field(repr=False)  # never in a repr, a log or a dump
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate


@dataclass(frozen=True)
class Issued:
    """A workload's files: its chain (its certificate first), its key, the mesh root."""

    cert_chain: bytes
    key: bytes = field(repr=False)
    root: bytes
    not_after: datetime


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_root(
    trust_domain: str, now: datetime, valid_for: timedelta = DEFAULT_ROOT_VALIDITY
) -> Authority:
    """A self-signed root that signs workloads itself (no intermediate)."""
    check_trust_domain(trust_domain)
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "Detour mesh root CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        # SPIFFE: a CA certificate names its trust domain
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(trust_domain, cert, key, (cert,), cert)


def brought_authority(
    trust_domain: str,
    root: x509.Certificate,
    signing_cert: x509.Certificate,
    signing_key: PrivateKey,
    intermediates: tuple[x509.Certificate, ...],
    now: datetime,
) -> Authority:
    """An operator's root and the CA certificate that will sign (its intermediates after it,
    up to but not including the root), checked: the key is the signing certificate's, both
    are CA certificates valid now, and the signing certificate chains to the root."""
    check_trust_domain(trust_domain)
    if not certs.key_matches(signing_cert, signing_key):
        raise CertificateError("ca-key: the key does not match ca-cert")
    chain = (signing_cert, *intermediates)
    for cert, what in ((root, "root-cert"), *((c, "ca-cert/cert-chain") for c in chain)):
        if not certs.is_ca(cert):
            raise CertificateError(f"{what}: {cert.subject.rfc4514_string()} is not a CA")
        if not certs.valid_at(cert, now):
            raise CertificateError(
                f"{what}: {cert.subject.rfc4514_string()} is not valid now "
                f"({certs.not_before(cert):%Y-%m-%d} to {certs.not_after(cert):%Y-%m-%d})"
            )
    if not certs.chains_to(chain, root):
        raise CertificateError("ca-cert does not chain to root-cert (through cert-chain)")
    chain = tuple(c for c in chain if c != root)
    return Authority(trust_domain, signing_cert, signing_key, chain or (root,), root)


def issue(
    authority: Authority,
    namespace: str,
    service_account: str,
    now: datetime,
    ttl: timedelta = DEFAULT_WORKLOAD_TTL,
) -> Issued:
    """A workload certificate for ``namespace``/``service_account`` and its fresh key."""
    if not timedelta(0) < ttl <= MAX_WORKLOAD_TTL:
        raise ValueError(f"ttl {ttl} is not between 0 and {MAX_WORKLOAD_TTL.days} days")
    identity = SpiffeId(authority.trust_domain, namespace, service_account)
    key = new_key()
    issuer = authority.signing_cert
    not_after = min(now + ttl, certs.not_after(issuer))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_workload_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(authority.signing_key, hashes.SHA256())
    )
    chain = [cert, *(c for c in authority.chain if c != authority.root)]
    return Issued(
        cert_chain=b"".join(pem(c) for c in chain),
        key=key_pem(key),
        root=pem(authority.root),
        not_after=not_after,
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _serial() -> int:
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1  # positive, 127 bits


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _workload_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
