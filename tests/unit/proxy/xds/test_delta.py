"""The Delta ADS state machine: changed resources in, removals by name, subscriptions by
difference, and what a new stream says it already holds. Real messages, no network."""

from __future__ import annotations

import itertools

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from support.xds_snapshots import assignment, cluster, outbound, tcp_listener

from proxy.config.model import Mesh
from proxy.xds.delta import DeltaState
from proxy.xds.resources import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER

DB = outbound(9000, "db.default")
WEB = outbound(8080, "web.default")
_nonces = itertools.count(1)


def delta(type_url: str, version: str, *messages, removed=(), names=None):
    resources = []
    for index, message in enumerate(messages):
        packed = AnyMessage()
        packed.Pack(message)
        name = names[index] if names else getattr(message, "name", "") or message.cluster_name
        resources.append(
            discovery_pb2.Resource(name=name, version=f"{version}-{index}", resource=packed)
        )
    return discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=type_url,
        resources=resources,
        removed_resources=list(removed),
        nonce=f"n{next(_nonces)}",
    )


def new_state() -> DeltaState:
    node = base_pb2.Node(id="sidecar~10.88.0.2~a.default~default.svc.cluster.local")
    return DeltaState(node, Mesh(), "127.0.0.1:1")


def warm_state() -> DeltaState:
    state = new_state()
    state.initial_requests()
    state.on_response(delta(TYPE_CLUSTER, "c1", cluster(DB)))
    state.on_response(delta(TYPE_LISTENER, "l1", tcp_listener("10.96.0.9", 9000, DB)))
    done = state.on_response(delta(TYPE_ENDPOINT, "e1", assignment(DB, [("10.88.0.5", 1)])))
    assert done.mesh is not None
    return state


def test_a_new_stream_subscribes_to_clusters_and_listeners_as_wildcards_node_once():
    first, second = new_state().initial_requests()
    assert (first.type_url, list(first.resource_names_subscribe)) == (TYPE_CLUSTER, [])
    assert (second.type_url, list(second.resource_names_subscribe)) == (TYPE_LISTENER, [])
    assert first.node.id.startswith("sidecar~") and not second.HasField("node")


def test_a_cluster_is_acked_by_nonce_and_its_endpoints_subscribed_by_name():
    state = new_state()
    state.initial_requests()
    cds = delta(TYPE_CLUSTER, "c1", cluster(DB))
    ack, subscribe = state.on_response(cds).requests
    assert (ack.type_url, ack.response_nonce, ack.HasField("error_detail")) == (
        TYPE_CLUSTER,
        cds.nonce,
        False,
    )
    assert (subscribe.type_url, list(subscribe.resource_names_subscribe)) == (TYPE_ENDPOINT, [DB])


def test_a_response_adds_to_what_is_held_and_removes_only_what_it_names():
    state = warm_state()
    added = state.on_response(delta(TYPE_CLUSTER, "c2", cluster(WEB)))  # DB is kept
    assert sorted(state.accepted.clusters) == sorted([DB, WEB])
    (subscribe,) = added.requests[1:]
    assert list(subscribe.resource_names_subscribe) == [WEB]
    assert list(subscribe.resource_names_unsubscribe) == []
    gone = state.on_response(delta(TYPE_CLUSTER, "c3", removed=[WEB]))
    assert sorted(state.accepted.clusters) == [DB]
    (unsubscribe,) = gone.requests[1:]
    assert list(unsubscribe.resource_names_unsubscribe) == [WEB]
    assert gone.mesh is not None and [s.key for s in gone.mesh.services] == ["db.default"]


def test_a_bad_resource_is_nacked_and_changes_nothing():
    state = warm_state()
    before = state.applied
    bad = delta(TYPE_CLUSTER, "c2", cluster(DB, lb_policy="MAGLEV"))
    outcome = state.on_response(bad)
    (nack,) = outcome.requests
    assert nack.response_nonce == bad.nonce and "lb_policy" in nack.error_detail.message
    assert state.applied is before and state.types[TYPE_CLUSTER].version == "c1"
    assert state.types[TYPE_CLUSTER].resource_versions == {DB: "c1-0"}


def test_a_resource_whose_outer_name_differs_from_its_own_is_nacked():
    state = warm_state()
    outcome = state.on_response(delta(TYPE_CLUSTER, "c2", cluster(WEB), names=["other"]))
    assert outcome.error is not None and "resources[0].name" in outcome.error


def test_an_unchanged_resource_set_builds_no_new_mesh():
    state = warm_state()
    outcome = state.on_response(delta(TYPE_LISTENER, "l2"))  # a new version, nothing in it
    assert outcome.mesh is None and outcome.error is None and not outcome.waiting_for
    assert state.types[TYPE_LISTENER].version == "l2"


def test_after_a_reconnect_the_resources_held_are_named_with_their_versions():
    state = warm_state()
    requests = state.initial_requests()
    assert [
        (r.type_url, list(r.resource_names_subscribe), dict(r.initial_resource_versions))
        for r in requests
    ] == [
        (TYPE_CLUSTER, [], {DB: "c1-0"}),
        (TYPE_ENDPOINT, [DB], {DB: "e1-0"}),
        (TYPE_LISTENER, [], {"10.96.0.9_9000": "l1-0"}),
    ]
