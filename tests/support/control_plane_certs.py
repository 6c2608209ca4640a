"""TEST certificates for a control plane that serves xDS over TLS, as istiod's 15012 does.

istiod's serving certificate carries DNS names (``istiod.istio-system.svc``), signed by the
mesh CA, and the sidecars it serves present their SPIFFE workload certificates. ``detour-ca``
issues only the latter (a workload certificate's one SAN is its SPIFFE ID), so this makes the
former for the tests, signed by the same authority.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.authority import Authority, Issued, key_pem, new_key, pem

ISTIOD_NAME = "istiod.istio-system.svc"


def serving_certificate(
    authority: Authority, dns_name: str = ISTIOD_NAME, ttl: timedelta = timedelta(hours=1)
) -> Issued:
    """A server certificate for ``dns_name`` (its only SAN) from ``authority``."""
    now = datetime.now(UTC)
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.signing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + ttl)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(authority.signing_key, hashes.SHA256())
    )
    return Issued(pem(cert), key_pem(key), pem(authority.root), now + ttl)
