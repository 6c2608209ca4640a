"""The SotW ADS state machine: what a sidecar answers to each response, and when it applies.

Driven with real DiscoveryResponse messages, no network: the requests it returns are the ones
the client writes on the stream.
"""

from __future__ import annotations

import itertools

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from support.xds_snapshots import (
    assignment,
    cluster,
    http_listener,
    outbound,
    route,
    route_config,
    tcp_listener,
    virtual_host,
)

from proxy.config.model import Mesh
from proxy.xds import cache
from proxy.xds.resources import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE
from proxy.xds.state import MESSAGE_CLASSES, SotwState

DB = outbound(9000, "db.default")
WEB = outbound(8080, "web.default")
_nonces = itertools.count(1)


def response(type_url: str, version: str, *messages, raw: bytes | None = None):
    packed = []
    for message in messages:
        item = AnyMessage()
        item.Pack(message)
        packed.append(item)
    if raw is not None:
        packed.append(AnyMessage(type_url=type_url, value=raw))
    return discovery_pb2.DiscoveryResponse(
        version_info=version, resources=packed, type_url=type_url, nonce=f"n{next(_nonces)}"
    )


def new_state() -> SotwState:
    return SotwState(
        base_pb2.Node(id="sidecar~10.88.0.2~a.default~default.svc.cluster.local"),
        Mesh(),
        "127.0.0.1:1",
    )


def test_a_new_stream_asks_for_clusters_then_listeners_as_wildcards():
    requests = new_state().initial_requests()
    assert [(r.type_url, list(r.resource_names), r.version_info) for r in requests] == [
        (TYPE_CLUSTER, [], ""),
        (TYPE_LISTENER, [], ""),
    ]
    assert requests[0].node.id.startswith("sidecar~")


def test_clusters_are_acked_then_their_endpoints_subscribed_and_the_mesh_built_once_warm():
    state = new_state()
    state.initial_requests()
    cds = response(TYPE_CLUSTER, "c1", cluster(DB))
    outcome = state.on_response(cds)
    assert outcome.mesh is None and outcome.waiting_for == (f"EDS {DB}",)
    ack, subscribe = outcome.requests
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (TYPE_CLUSTER, "c1", cds.nonce)
    assert not ack.HasField("error_detail")
    assert (subscribe.type_url, list(subscribe.resource_names)) == (TYPE_ENDPOINT, [DB])
    lds = response(TYPE_LISTENER, "l1", tcp_listener("10.96.0.9", 9000, DB))
    assert state.on_response(lds).mesh is None  # still waiting for the endpoints
    done = state.on_response(response(TYPE_ENDPOINT, "e1", assignment(DB, [("10.88.0.5", 1)])))
    assert done.mesh is not None
    assert [s.key for s in done.mesh.services] == ["db.default"]
    assert "CDS c1" in done.mesh.source and "EDS e1" in done.mesh.source


def warm_state() -> SotwState:
    state = new_state()
    state.initial_requests()
    state.on_response(response(TYPE_CLUSTER, "c1", cluster(DB)))
    state.on_response(response(TYPE_LISTENER, "l1", tcp_listener("10.96.0.9", 9000, DB)))
    state.on_response(response(TYPE_ENDPOINT, "e1", assignment(DB, [("10.88.0.5", 1)])))
    assert state.applied is not None
    return state


def test_a_bad_resource_is_nacked_with_the_last_good_version_and_changes_nothing():
    state = warm_state()
    before = state.applied
    bad = response(TYPE_CLUSTER, "c2", cluster(DB, lb_policy="MAGLEV"))
    outcome = state.on_response(bad)
    (nack,) = outcome.requests
    assert (nack.version_info, nack.response_nonce) == ("c1", bad.nonce)
    assert "lb_policy" in nack.error_detail.message and DB in nack.error_detail.message
    assert outcome.mesh is None and state.applied is before
    assert state.accepted.clusters[DB].lb_policy == 0  # the accepted cluster is the old one


def test_bytes_that_do_not_parse_are_nacked():
    state = warm_state()
    outcome = state.on_response(response(TYPE_CLUSTER, "c2", raw=b"\xff\xff\xff"))
    assert outcome.error is not None and "does not parse" in outcome.error


def test_a_cluster_missing_from_a_cds_response_is_removed_with_its_endpoint_subscription():
    state = warm_state()
    state.on_response(response(TYPE_CLUSTER, "c2", cluster(DB), cluster(WEB)))
    assert state.types[TYPE_ENDPOINT].names == tuple(sorted((DB, WEB)))
    outcome = state.on_response(response(TYPE_LISTENER, "l2"))  # no listener either
    assert outcome.mesh is None  # WEB still warming
    outcome = state.on_response(response(TYPE_CLUSTER, "c3", cluster(DB)))
    assert state.types[TYPE_ENDPOINT].names == (DB,)
    assert outcome.mesh is not None
    assert [s.key for s in outcome.mesh.services] == ["db.default"]


def test_an_endpoint_response_updates_only_the_assignments_it_carries():
    state = warm_state()
    state.on_response(response(TYPE_CLUSTER, "c2", cluster(DB), cluster(WEB)))
    outcome = state.on_response(response(TYPE_ENDPOINT, "e2", assignment(WEB, [("10.88.0.7", 80)])))
    assert outcome.mesh is not None  # DB's assignment is kept from e1
    hosts = {s.key: [str(e.address) for e in s.endpoints] for s in outcome.mesh.services}
    assert hosts == {"db.default": ["10.88.0.5"], "web.default": ["10.88.0.7"]}


def test_http_listeners_subscribe_to_their_route_configurations():
    state = new_state()
    state.initial_requests()
    state.on_response(response(TYPE_CLUSTER, "c1", cluster(WEB)))
    state.on_response(response(TYPE_ENDPOINT, "e1", assignment(WEB, [("10.88.0.7", 80)])))
    outcome = state.on_response(response(TYPE_LISTENER, "l1", http_listener(8080)))
    assert [(r.type_url, list(r.resource_names)) for r in outcome.requests][1] == (
        TYPE_ROUTE,
        ["8080"],
    )
    rds = route_config("8080", [virtual_host("web.default", 8080, "10.96.0.7", [route(WEB)])])
    done = state.on_response(response(TYPE_ROUTE, "r1", rds))
    assert done.mesh is not None and done.mesh.service("web.default").http_routes


def test_a_snapshot_that_fails_as_a_whole_is_nacked_on_the_response_that_completed_it():
    state = new_state()
    state.initial_requests()
    other = outbound(8080, "other.default")
    state.on_response(response(TYPE_CLUSTER, "c1", cluster(WEB), cluster(other)))
    assignments = (assignment(WEB, [("10.88.0.7", 80)]), assignment(other, [("10.88.0.8", 80)]))
    state.on_response(response(TYPE_ENDPOINT, "e1", *assignments))
    before = state.applied  # clusters and endpoints, no listener yet
    state.on_response(response(TYPE_LISTENER, "l1", http_listener(8080)))
    # One virtual host routing to two services: fine on its own, not in Detour's model.
    mixed = [route(WEB, "/a"), route(other)]
    rds = route_config("8080", [virtual_host("web.default", 8080, "10.96.0.7", mixed)])
    outcome = state.on_response(response(TYPE_ROUTE, "r1", rds))
    assert outcome.error is not None and "routes[1].route.cluster" in outcome.error
    assert outcome.requests[0].version_info == ""  # nothing of RDS accepted yet
    assert state.applied is before and "r1" not in str(state.types[TYPE_ROUTE])


def test_after_a_reconnect_the_versions_and_subscriptions_held_are_sent_again():
    state = warm_state()
    requests = state.initial_requests()
    assert [
        (r.type_url, r.version_info, list(r.resource_names), r.response_nonce) for r in requests
    ] == [
        (TYPE_CLUSTER, "c1", [], ""),
        (TYPE_ENDPOINT, "e1", [DB], ""),
        (TYPE_LISTENER, "l1", [], ""),
    ]


def test_a_cached_snapshot_round_trips_and_a_restart_starts_from_it(tmp_path):
    state = warm_state()
    path = tmp_path / "xds-cache.json"
    cache.save(path, state.cached())
    assert path.stat().st_mode & 0o777 == 0o600
    restarted = new_state()
    mesh = restarted.restore(cache.load(path, MESSAGE_CLASSES), str(path))
    assert mesh is not None and [s.key for s in mesh.services] == ["db.default"]
    assert mesh.source == f"xds cache {path}"
    requests = restarted.initial_requests()  # it tells the server what it already has
    assert [(r.type_url, r.version_info) for r in requests] == [
        (TYPE_CLUSTER, "c1"),
        (TYPE_ENDPOINT, "e1"),
        (TYPE_LISTENER, "l1"),
    ]


def test_a_damaged_cache_is_ignored(tmp_path):
    path = tmp_path / "xds-cache.json"
    path.write_text('{"format": "detour-xds-cache/1", "types": {"x": ')
    assert cache.load(path, MESSAGE_CLASSES) is None
    assert cache.load(tmp_path / "absent.json", MESSAGE_CLASSES) is None


def test_a_resource_resent_unchanged_is_the_very_object_accepted_before():
    """State of the World resends every resource; those whose bytes did not change are not
    decoded or translated again (the mesh build reuses their translations)."""
    state = new_state()
    state.initial_requests()
    state.on_response(response(TYPE_CLUSTER, "c1", cluster(DB), cluster(WEB)))
    before = dict(state.accepted.clusters)
    changed = cluster(WEB, connect_timeout="2s")
    outcome = state.on_response(response(TYPE_CLUSTER, "c2", cluster(DB), changed))
    assert outcome.error is None
    assert state.accepted.clusters[DB] is before[DB]  # same bytes: the same message
    assert state.accepted.clusters[WEB] is not before[WEB]
    assert state.accepted.clusters[WEB].connect_timeout.seconds == 2
