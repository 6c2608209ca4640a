"""Mesh mTLS on a cluster, as istiod writes it: ``transport_socket_matches``. Pure.

istiod gives each cluster of a meshed service two transport sockets, picked per endpoint by
the endpoint's ``envoy.transport_socket_match`` metadata: an endpoint marked
``tlsMode: istio`` (a sidecar runs next to it) is reached over Istio mTLS, every other
endpoint in plaintext (auto mTLS). The TLS socket's certificate and roots are the SDS secrets
``default`` and ``ROOTCA``, which the istio-agent beside Envoy serves from the workload's own
certificate. Detour is its own agent: those two names mean the workload identity it already
holds and rotates (``workload.tls``). The peer must prove the SPIFFE ID its SAN matcher names.

What that becomes in Detour's model: the service account each marked endpoint runs as
(``Endpoint.service_account``), from which the connector derives the SPIFFE ID it verifies.

Refused by name: TLS for endpoints not marked ``tlsMode: istio`` (TLS to an upstream outside
the mesh, DestinationRule SIMPLE or MUTUAL), a plaintext match that would shadow the mTLS one,
secret names other than ``default``/``ROOTCA`` (certificates the workload does not hold), a
SAN list that is not one exact SPIFFE ID of the service's namespace, and every TLS field not
listed here. Accepted and ignored: ``alpn_protocols`` (Detour's sidecars negotiate their own
mesh ALPN, which says the inner protocol), ``sni`` (istiod's ``outbound_.PORT_._.HOST``; the
server side routes by the original destination) and each secret's ``sds_config`` (where the
agent would be asked).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import json_format

from detour_common.spiffe import SpiffeError, SpiffeId, parse
from proxy.xds.resources import only_fields, refuse, unpack

MATCH_KEY = "envoy.transport_socket_match"  # the endpoint metadata istiod labels
ISTIO_MODE = {"tlsMode": "istio"}
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
WORKLOAD_SECRET = "default"  # Istio's names for the workload's certificate and its roots
ROOT_SECRET = "ROOTCA"
_SAN_URI = common_pb2.SubjectAltNameMatcher.SanType.URI


def mesh_peer(cluster: Any, namespace: str) -> SpiffeId | None:
    """The identity the cluster's ``tlsMode: istio`` endpoints must prove, or None when the
    cluster has no mesh mTLS (raises Refusal naming the field)."""
    if cluster.HasField("transport_socket"):
        raise refuse(
            "transport_socket",
            cluster.transport_socket.name,
            "TLS to upstreams outside the mesh is not supported (mesh mTLS is istiod's "
            "transport_socket_matches)",
        )
    peer = None
    plaintext_seen = False
    for index, match in enumerate(cluster.transport_socket_matches):
        where = f"transport_socket_matches[{index}]"
        only_fields(match, where, ("name", "match", "transport_socket"))
        criteria = json_format.MessageToDict(match.match)
        socket = match.transport_socket
        only_fields(socket, f"{where}.transport_socket", ("name", "typed_config"))
        if socket.name == RAW_BUFFER:
            if criteria:
                raise refuse(f"{where}.match", criteria, "plaintext is for every other endpoint")
            plaintext_seen = True
            continue
        if criteria != ISTIO_MODE:
            raise refuse(f"{where}.match", criteria, "TLS only for endpoints marked tlsMode: istio")
        if plaintext_seen:
            raise refuse(where, match.name, "the plaintext match before it would shadow it")
        if peer is not None:
            raise refuse(where, match.name, "one tlsMode: istio match")
        peer = _istio_tls(socket, f"{where}.transport_socket", namespace)
    return peer


def endpoint_is_meshed(metadata: Any) -> bool:
    """An endpoint's ``filter_metadata`` marks it ``tlsMode: istio``."""
    if MATCH_KEY not in metadata.filter_metadata:
        return False
    fields = metadata.filter_metadata[MATCH_KEY].fields
    return "tlsMode" in fields and fields["tlsMode"].string_value == "istio"


def _istio_tls(socket: Any, where: str, namespace: str) -> SpiffeId:
    if socket.name != TLS_SOCKET:
        raise refuse(f"{where}.name", socket.name, f"{TLS_SOCKET} or {RAW_BUFFER}")
    where = f"{where}.typed_config"
    context = unpack(socket.typed_config, tls_pb2.UpstreamTlsContext, where)
    only_fields(context, where, ("common_tls_context",), ("sni",))
    common = context.common_tls_context
    cwhere = f"{where}.common_tls_context"
    only_fields(
        common,
        cwhere,
        ("tls_certificate_sds_secret_configs", "combined_validation_context"),
        ("alpn_protocols",),
    )
    secrets = common.tls_certificate_sds_secret_configs
    if len(secrets) != 1:
        raise refuse(f"{cwhere}.tls_certificate_sds_secret_configs", len(secrets), "exactly one")
    _workload_secret(secrets[0], f"{cwhere}.tls_certificate_sds_secret_configs[0]", WORKLOAD_SECRET)
    vwhere = f"{cwhere}.combined_validation_context"
    if not common.HasField("combined_validation_context"):
        raise refuse(vwhere, "<missing>", "the peer must be verified")
    combined = common.combined_validation_context
    only_fields(
        combined, vwhere, ("default_validation_context", "validation_context_sds_secret_config")
    )
    _workload_secret(
        combined.validation_context_sds_secret_config,
        f"{vwhere}.validation_context_sds_secret_config",
        ROOT_SECRET,
    )
    validation = combined.default_validation_context
    return _peer_id(validation, f"{vwhere}.default_validation_context", namespace)


def _workload_secret(config: Any, where: str, expected: str) -> None:
    only_fields(config, where, ("name",), ("sds_config",))
    if config.name != expected:
        raise refuse(
            f"{where}.name",
            config.name,
            f"Detour holds the workload's own certificate and roots ({WORKLOAD_SECRET}, "
            f"{ROOT_SECRET}), no other secret",
        )


def _peer_id(validation: Any, where: str, namespace: str) -> SpiffeId:
    """The one SPIFFE ID the peer must carry, from the typed or the older untyped matchers."""
    only_fields(validation, where, ("match_typed_subject_alt_names", "match_subject_alt_names"))
    typed, untyped = validation.match_typed_subject_alt_names, validation.match_subject_alt_names
    how = "exactly one SPIFFE ID matched exact (the service account the endpoints run as)"
    if typed and untyped:
        raise refuse(f"{where}.match_subject_alt_names", "<set>", "use one of the two lists")
    if typed:
        if len(typed) != 1 or typed[0].san_type != _SAN_URI:
            raise refuse(f"{where}.match_typed_subject_alt_names", len(typed), how)
        matcher, mwhere = typed[0].matcher, f"{where}.match_typed_subject_alt_names[0].matcher"
    elif len(untyped) == 1:
        matcher, mwhere = untyped[0], f"{where}.match_subject_alt_names[0]"
    else:
        raise refuse(f"{where}.match_subject_alt_names", len(untyped), how)
    only_fields(matcher, mwhere, ("exact",))
    try:
        spiffe = parse(matcher.exact)
    except SpiffeError as err:
        raise refuse(f"{mwhere}.exact", matcher.exact, str(err)) from None
    if spiffe.namespace != namespace:
        raise refuse(
            f"{mwhere}.exact",
            matcher.exact,
            f"a service account of the service's namespace ({namespace})",
        )
    return spiffe
