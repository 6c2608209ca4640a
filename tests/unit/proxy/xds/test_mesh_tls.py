"""Mesh mTLS from CDS: istiod's transport_socket_matches become the service account each
endpoint marked tlsMode: istio runs as (the connector verifies its SPIFFE ID); what Detour
cannot honour is refused naming the resource and the field."""

from __future__ import annotations

import pytest
from support.xds_snapshots import (
    MESHED_ENDPOINT,
    assignment,
    checked,
    cluster,
    istio_mtls,
    outbound,
)

from proxy.config.model import Mesh
from proxy.xds.resources import XdsRejected
from proxy.xds.translate import build_mesh

WEB = outbound(8080, "web.default")
WEB_ADMIN = outbound(9090, "web.default")
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"


def meshed_cluster(name: str = WEB, spiffe_id: str = WEB_ID, port: int = 8080):
    return cluster(name, **istio_mtls(spiffe_id, port, "web.default.svc.cluster.local"))


def endpoints(name: str = WEB):
    """10.0.0.1 has a sidecar (tlsMode: istio), 10.0.0.2 does not."""
    meshed = assignment(name, [("10.0.0.1", 8080)], **MESHED_ENDPOINT)
    plain = assignment(name, [("10.0.0.2", 8080)])
    meshed.endpoints.extend(plain.endpoints)
    return meshed


def web(*messages):
    mesh = build_mesh(checked(*messages), Mesh(), "xds test")
    return next(s for s in mesh.services if s.name == "web")


def test_endpoints_marked_istio_are_reached_as_the_service_account_the_san_names():
    service = web(meshed_cluster(), endpoints())
    accounts = {str(e.address): e.service_account for e in service.endpoints}
    assert accounts == {"10.0.0.1": "web", "10.0.0.2": None}  # auto mTLS: plaintext for .2


def test_the_typed_uri_matcher_istiod_also_writes_is_the_same():
    spec = istio_mtls(WEB_ID, 8080, "web.default.svc.cluster.local")
    context = spec["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    validation = context["common_tls_context"]["combined_validation_context"]
    validation["default_validation_context"] = {
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": WEB_ID}}]
    }
    service = web(cluster(WEB, **spec), endpoints())
    assert {e.service_account for e in service.endpoints} == {"web", None}


def test_a_cluster_without_matches_keeps_every_endpoint_plaintext():
    service = web(cluster(WEB), endpoints())
    assert {e.service_account for e in service.endpoints} == {None}


def _tls(spec: dict) -> dict:
    return spec["transport_socket_matches"][0]["transport_socket"]["typed_config"]


def _validation(spec: dict) -> dict:
    return _tls(spec)["common_tls_context"]["combined_validation_context"]


def _two_sans(spec):
    _validation(spec)["default_validation_context"]["match_subject_alt_names"].append(
        {"exact": "spiffe://cluster.local/ns/default/sa/other"}
    )


def _prefix_san(spec):
    _validation(spec)["default_validation_context"]["match_subject_alt_names"] = [
        {"prefix": "spiffe://cluster.local/"}
    ]


def _other_namespace(spec):
    _validation(spec)["default_validation_context"]["match_subject_alt_names"] = [
        {"exact": "spiffe://cluster.local/ns/prod/sa/web"}
    ]


def _not_spiffe(spec):
    _validation(spec)["default_validation_context"]["match_subject_alt_names"] = [
        {"exact": "web.default.svc"}
    ]


def _other_secret(spec):
    _tls(spec)["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] = "file-x"


def _other_root(spec):
    _validation(spec)["validation_context_sds_secret_config"]["name"] = "OTHER"


def _tls_for_everyone(spec):
    spec["transport_socket_matches"][0]["match"] = {}


def _plaintext_first(spec):
    spec["transport_socket_matches"].reverse()


def _unsupported_tls_field(spec):
    _tls(spec)["max_session_keys"] = 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_two_sans, "default_validation_context.match_subject_alt_names"),
        (_prefix_san, "match_subject_alt_names[0].prefix"),
        (_other_namespace, "match_subject_alt_names[0].exact"),
        (_not_spiffe, "match_subject_alt_names[0].exact"),
        (_other_secret, "tls_certificate_sds_secret_configs[0].name"),
        (_other_root, "validation_context_sds_secret_config.name"),
        (_tls_for_everyone, "transport_socket_matches[0].match"),
        (_plaintext_first, "transport_socket_matches[1]"),
        (_unsupported_tls_field, "typed_config.max_session_keys"),
    ],
)
def test_mesh_tls_detour_cannot_honour_is_refused_naming_the_field(change, field):
    spec = istio_mtls(WEB_ID, 8080, "web.default.svc.cluster.local")
    change(spec)
    with pytest.raises(XdsRejected) as caught:
        web(cluster(WEB, **spec), endpoints())
    assert WEB in str(caught.value) and field in str(caught.value), caught.value


def test_tls_to_an_upstream_outside_the_mesh_is_refused():
    plain_tls = {"transport_socket": {"name": "envoy.transport_sockets.tls"}}
    with pytest.raises(XdsRejected, match=r"transport_socket.*outside the mesh"):
        web(cluster(WEB, **plain_tls), endpoints())


def test_a_peer_of_another_trust_domain_is_refused():
    other = "spiffe://example.org/ns/default/sa/web"
    with pytest.raises(XdsRejected, match="trust domain"):
        web(meshed_cluster(spiffe_id=other), endpoints())


def test_every_cluster_of_a_service_must_verify_the_same_identity():
    admin_id = "spiffe://cluster.local/ns/default/sa/admin"
    with pytest.raises(XdsRejected, match="must verify the same SPIFFE ID"):
        web(
            meshed_cluster(),
            endpoints(),
            meshed_cluster(WEB_ADMIN, admin_id, 9090),
            endpoints(WEB_ADMIN),
        )


def test_a_subset_cluster_gone_from_cds_but_still_routed_to_does_not_count_as_plaintext():
    """A route still names web's v1 subset after CDS dropped it (a removal in flight): the
    stand-in has no identity to disagree with, as Envoy takes such a snapshot."""
    from support.xds_snapshots import http_listener, route, route_config, virtual_host

    web_v1 = outbound(8080, "web.default", "v1")
    routes = route_config("8080", [virtual_host("web.default", 8080, "10.96.0.1", [route(web_v1)])])
    service = web(meshed_cluster(), endpoints(), http_listener(8080), routes)
    assert {e.service_account for e in service.endpoints} == {"web", None}
