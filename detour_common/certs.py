"""X.509 facts the CA and the sidecar both check, on ``cryptography`` certificates: who signed a
certificate, which URI SANs it carries, whether a key is the certificate's, whether it is
valid at a given time. Pure: the time is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(ValueError):
    """A certificate, key or chain is unusable; the message says which and why."""


def load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in ``pem`` (at least one), in file order."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise CertificateError(f"{what}: not PEM certificates ({err})") from None
    if not certs:
        raise CertificateError(f"{what}: no certificate in it")
    return certs


def load_private_key(pem: bytes, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        # The reason from cryptography never contains the key's bytes.
        raise CertificateError(f"{what}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{what}: only EC and RSA keys are supported")
    return key


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ours == theirs


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer``'s key made ``cert``'s signature (and the names agree)."""
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def chains_to(chain: Sequence[x509.Certificate], root: x509.Certificate) -> bool:
    """Each certificate of ``chain`` (leaf first) is signed by the next, the last by
    ``root`` (a chain may end with the root itself)."""
    links = list(chain)
    if links and links[-1] == root:
        links.pop()
    if not links:
        return bool(chain)  # the root itself
    issuers = [*links[1:], root]
    return all(signed_by(cert, issuer) for cert, issuer in zip(links, issuers, strict=True))


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def not_before(cert: x509.Certificate) -> datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return not_before(cert) <= now <= not_after(cert)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca
