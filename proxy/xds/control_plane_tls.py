"""TLS (and mTLS) to the control plane: the bootstrap's ``transport_socket`` on the ADS cluster.

istiod serves xDS in plaintext on 15010 and over mutual TLS on 15012, where it knows a sidecar by
its workload certificate; clusters that disable the plaintext port leave only 15012. Envoy is
told so by an ``envoy.transport_sockets.tls`` transport socket on the ``xds-grpc`` cluster of
its bootstrap, and so is Detour, with the same file:

- ``common_tls_context.tls_certificates``: at most one, the certificate chain and key the
  sidecar presents (none: server-authenticated TLS only);
- ``common_tls_context.validation_context.trusted_ca``: the roots the server's chain must
  reach (required: a control plane that is not verified could hand the sidecar any mesh);
- ``validation_context.match_typed_subject_alt_names`` (or the older
  ``match_subject_alt_names``): exactly one DNS name matched ``exact``, the name the server's
  certificate must carry (istiod's is ``istiod.istio-system.svc``), also sent as SNI. gRPC's
  TLS checks one host name and nothing else, so other matchers (URI, prefix, regex) are
  refused rather than checked more loosely than written; ``sni``, if given, must be that name.

Each data source is a ``filename``, ``inline_bytes`` or ``inline_string``. Files are read again
at every (re)connection, so workload certificates that rotate on disk are the ones presented
the next time the stream opens; a stream already open keeps its TLS session. Nothing read here
is ever logged or shown in ``/config_dump`` (only the paths and the server name are).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from detour_common import certs
from proxy.xds.resources import only_fields, refuse, unpack

TLS_SOCKET = "envoy.transport_sockets.tls"
_SAN_DNS = common_pb2.SubjectAltNameMatcher.SanType.DNS


class ControlPlaneTlsError(ValueError):
    """A certificate, key or root for the control plane cannot be used: which one and why."""


@dataclass(frozen=True)
class DataSource:
    """Envoy's DataSource: a file (read when needed) or bytes written in the bootstrap."""

    where: str  # the bootstrap field, for errors
    path: Path | None = None
    inline: bytes | None = None

    def read(self) -> bytes:
        if self.inline is not None:
            return self.inline
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as err:
            raise ControlPlaneTlsError(f"{self.where} ({self.path}): cannot read: {err}") from None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "<inline>"


@dataclass(frozen=True)
class TlsMaterial:
    """What gRPC's channel credentials take, checked: PEM bytes."""

    root: bytes
    chain: bytes | None
    key: bytes | None


@dataclass(frozen=True)
class ControlPlaneTls:
    server_name: str  # the DNS name the server's certificate must carry, and the SNI
    root: DataSource
    chain: DataSource | None = None
    key: DataSource | None = None

    def load(self) -> TlsMaterial:
        """Read and check every source: PEM that parses, a key that is the chain's first
        certificate's. Raises ControlPlaneTlsError naming the field."""
        root = self.root.read()
        certs_of(root, self.root)
        if self.chain is None or self.key is None:
            return TlsMaterial(root, None, None)
        chain, key = self.chain.read(), self.key.read()
        leaf = certs_of(chain, self.chain)[0]
        try:
            private = certs.load_private_key(key, self.key.where)
        except certs.CertificateError as err:
            raise ControlPlaneTlsError(str(err)) from None
        if not certs.key_matches(leaf, private):
            raise ControlPlaneTlsError(
                f"{self.key.where} ({self.key.describe()}): not the key of "
                f"{self.chain.where} ({self.chain.describe()})"
            )
        return TlsMaterial(root, chain, key)

    def describe(self) -> dict[str, object]:
        """For /config_dump: where the material comes from, never the material."""
        return {
            "server_name": self.server_name,
            "trusted_ca": self.root.describe(),
            "client_certificate": self.chain.describe() if self.chain is not None else None,
        }


def certs_of(pem: bytes, source: DataSource) -> list[Any]:
    try:
        return certs.load_certificates(pem, f"{source.where} ({source.describe()})")
    except certs.CertificateError as err:
        raise ControlPlaneTlsError(str(err)) from None


def parse_transport_socket(socket: Any, where: str) -> ControlPlaneTls:
    """Pure: the ADS cluster's ``transport_socket`` (a TransportSocket message)."""
    only_fields(socket, where, ("name", "typed_config"))
    if socket.name != TLS_SOCKET:
        raise refuse(f"{where}.name", socket.name, f"only {TLS_SOCKET}")
    where = f"{where}.typed_config"
    context = unpack(socket.typed_config, tls_pb2.UpstreamTlsContext, where)
    only_fields(context, where, ("common_tls_context", "sni"))
    common = context.common_tls_context
    cwhere = f"{where}.common_tls_context"
    only_fields(common, cwhere, ("tls_certificates", "validation_context", "alpn_protocols"))
    if list(common.alpn_protocols) not in ([], ["h2"]):
        raise refuse(f"{cwhere}.alpn_protocols", list(common.alpn_protocols), "gRPC speaks h2")
    chain = key = None
    if len(common.tls_certificates) > 1:
        raise refuse(f"{cwhere}.tls_certificates", len(common.tls_certificates), "at most one")
    if common.tls_certificates:
        twhere = f"{cwhere}.tls_certificates[0]"
        pair = common.tls_certificates[0]
        only_fields(pair, twhere, ("certificate_chain", "private_key"))
        if not pair.HasField("certificate_chain") or not pair.HasField("private_key"):
            raise refuse(twhere, "<incomplete>", "certificate_chain and private_key together")
        chain = data_source(pair.certificate_chain, f"{twhere}.certificate_chain")
        key = data_source(pair.private_key, f"{twhere}.private_key")
    vwhere = f"{cwhere}.validation_context"
    if not common.HasField("validation_context"):
        raise refuse(vwhere, "<missing>", "the control plane must be verified: give trusted_ca")
    validation = common.validation_context
    only_fields(
        validation,
        vwhere,
        ("trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names"),
    )
    if not validation.HasField("trusted_ca"):
        raise refuse(f"{vwhere}.trusted_ca", "<missing>", "the roots the server must chain to")
    root = data_source(validation.trusted_ca, f"{vwhere}.trusted_ca")
    name = _server_name(validation, vwhere)
    if context.sni and context.sni != name:
        raise refuse(
            f"{where}.sni", context.sni, f"gRPC sends the name it verifies ({name}) as SNI"
        )
    return ControlPlaneTls(name, root, chain, key)


def _server_name(validation: Any, where: str) -> str:
    """The one DNS name matched exactly, from the typed or the older untyped matchers."""
    typed, untyped = validation.match_typed_subject_alt_names, validation.match_subject_alt_names
    if typed and untyped:
        raise refuse(f"{where}.match_subject_alt_names", "<set>", "use one of the two lists")
    how = "exactly one DNS name matched exact (gRPC checks one host name, nothing else)"
    if typed:
        if len(typed) != 1 or typed[0].san_type != _SAN_DNS:
            raise refuse(f"{where}.match_typed_subject_alt_names", len(typed), how)
        matcher, mwhere = typed[0].matcher, f"{where}.match_typed_subject_alt_names[0].matcher"
    elif untyped:
        if len(untyped) != 1:
            raise refuse(f"{where}.match_subject_alt_names", len(untyped), how)
        matcher, mwhere = untyped[0], f"{where}.match_subject_alt_names[0]"
    else:
        raise refuse(f"{where}.match_typed_subject_alt_names", "<missing>", how)
    only_fields(matcher, mwhere, ("exact",))
    if not matcher.exact:
        raise refuse(mwhere, "<no exact>", how)
    return str(matcher.exact)


def data_source(source: Any, where: str) -> DataSource:
    only_fields(source, where, ("filename", "inline_bytes", "inline_string"))
    kind = source.WhichOneof("specifier")
    if kind == "filename":
        return DataSource(where, path=Path(source.filename))
    if kind == "inline_bytes":
        return DataSource(where, inline=bytes(source.inline_bytes))
    if kind == "inline_string":
        return DataSource(where, inline=source.inline_string.encode())
    raise refuse(where, "<empty>", "filename, inline_bytes or inline_string")
