"""The mesh CA: what it issues is what Istio's CA issues, checked field by field, and it refuses
an operator's CA that cannot sign for the mesh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.authority import (
    DEFAULT_WORKLOAD_TTL,
    brought_authority,
    create_root,
    issue,
    new_key,
)
from detour_common import certs
from detour_common.certs import CertificateError
from detour_common.spiffe import SpiffeError

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def leaf_and_chain(issued) -> tuple[x509.Certificate, list[x509.Certificate]]:
    chain = certs.load_certificates(issued.cert_chain, "cert-chain")
    return chain[0], chain


def test_a_workload_certificate_carries_only_its_spiffe_id() -> None:
    authority = create_root("cluster.local", NOW)
    issued = issue(authority, "default", "client", NOW)
    leaf, chain = leaf_and_chain(issued)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # with an empty subject, RFC 5280 requires it
    assert list(san.value) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/client")
    ]
    assert leaf.subject == x509.Name([])
    assert chain == [leaf]  # a root that signs itself: nothing between


def test_a_workload_certificate_is_a_short_lived_tls_client_and_server_leaf() -> None:
    authority = create_root("cluster.local", NOW)
    leaf, _chain = leaf_and_chain(issue(authority, "default", "client", NOW))
    assert certs.not_after(leaf) == NOW + DEFAULT_WORKLOAD_TTL
    assert certs.not_before(leaf) <= NOW
    assert not certs.is_ca(leaf)
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(purposes) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"


def test_the_key_is_the_certificates_and_the_chain_reaches_the_root() -> None:
    authority = create_root("cluster.local", NOW)
    issued = issue(authority, "prod", "web", NOW)
    leaf, chain = leaf_and_chain(issued)
    key = certs.load_private_key(issued.key, "key.pem")
    assert certs.key_matches(leaf, key)
    root = certs.load_certificates(issued.root, "root")[0]
    assert root == authority.root and certs.chains_to(chain, root)
    other = create_root("cluster.local", NOW).root
    assert not certs.chains_to(chain, other)


def test_the_root_names_its_trust_domain_and_is_a_ca() -> None:
    root = create_root("corp.example", NOW).root
    assert certs.is_ca(root) and certs.signed_by(root, root)
    assert certs.uri_sans(root) == ["spiffe://corp.example"]


def test_a_workload_certificate_never_outlives_its_issuer() -> None:
    authority = create_root("cluster.local", NOW, valid_for=timedelta(hours=2))
    leaf, _ = leaf_and_chain(issue(authority, "default", "client", NOW, timedelta(hours=24)))
    assert certs.not_after(leaf) == certs.not_after(authority.root)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(days=91)])
def test_a_lifetime_out_of_bounds_is_refused(ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issue(create_root("cluster.local", NOW), "default", "client", NOW, ttl)


@pytest.mark.parametrize(
    ("namespace", "account", "named"),
    [("Default", "client", "namespace 'Default'"), ("default", "a/b", "service account 'a/b'")],
)
def test_names_that_are_not_kubernetes_names_are_refused(namespace, account, named) -> None:
    with pytest.raises(SpiffeError, match=named):
        issue(create_root("cluster.local", NOW), namespace, account, NOW)


def intermediate_of(root_authority, now: datetime, ca: bool = True):
    """A CA certificate signed by ``root_authority``'s root, and its key."""
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root_authority.root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    from cryptography.hazmat.primitives import hashes

    return builder.sign(root_authority.signing_key, hashes.SHA256()), key


def test_an_operators_root_and_intermediate_issue_chained_certificates() -> None:
    root = create_root("cluster.local", NOW)
    intermediate, key = intermediate_of(root, NOW)
    authority = brought_authority("cluster.local", root.root, intermediate, key, (), NOW)
    leaf, chain = leaf_and_chain(issue(authority, "default", "client", NOW))
    assert chain == [leaf, intermediate]  # what the workload sends: its own and the signer
    assert certs.signed_by(leaf, intermediate) and certs.chains_to(chain, root.root)


def test_an_operators_ca_is_checked_before_anything_is_used() -> None:
    root = create_root("cluster.local", NOW)
    intermediate, key = intermediate_of(root, NOW)
    with pytest.raises(CertificateError, match="does not match"):
        brought_authority("cluster.local", root.root, intermediate, new_key(), (), NOW)
    leaf_like, leaf_key = intermediate_of(root, NOW, ca=False)
    with pytest.raises(CertificateError, match="is not a CA"):
        brought_authority("cluster.local", root.root, leaf_like, leaf_key, (), NOW)
    stranger = create_root("cluster.local", NOW).root
    with pytest.raises(CertificateError, match="does not chain"):
        brought_authority("cluster.local", stranger, intermediate, key, (), NOW)
    expired_root = create_root("cluster.local", NOW - timedelta(days=400), timedelta(days=1))
    old, old_key = intermediate_of(expired_root, NOW)
    with pytest.raises(CertificateError, match="not valid now"):
        brought_authority("cluster.local", expired_root.root, old, old_key, (), NOW)
