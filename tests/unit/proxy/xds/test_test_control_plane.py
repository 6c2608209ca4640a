"""The test control plane itself, on loopback, against a bare gRPC client (no sidecar): the
xDS e2e tests are only as good as the server they run against."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from support.xds_control_plane import TYPE_CLUSTER, TYPE_ENDPOINT, XdsTestControlPlane
from support.xds_snapshots import assignment, cluster, outbound, snapshot

NODE = base_pb2.Node(id="sidecar~127.0.0.1~t.default~default.svc.cluster.local")
A, B = outbound(80, "a.default"), outbound(80, "b.default")


class BareClient:
    """One ADS stream driven by hand: requests in, responses out, with a deadline."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._responses = stub.StreamAggregatedResources(self._pending())

    def _pending(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, type_url: str, names=(), version="", nonce="", error="") -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=NODE,
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if error:
            request.error_detail.message = error
        self._requests.put(request)

    def receive(self) -> discovery_pb2.DiscoveryResponse:
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(None)
        self._channel.close()


@pytest.fixture
def plane() -> Iterator[XdsTestControlPlane]:
    cp = XdsTestControlPlane("127.0.0.1", 0)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def client(plane: XdsTestControlPlane) -> Iterator[BareClient]:
    bare = BareClient(plane.address)
    try:
        yield bare
    finally:
        bare.close()


def names_of(response: discovery_pb2.DiscoveryResponse, kind: type) -> list[str]:
    out = []
    for packed in response.resources:
        message = kind()
        packed.Unpack(message)
        out.append(message.name if hasattr(message, "name") else message.cluster_name)
    return out


def test_wildcard_clusters_named_endpoints_acks_and_a_push(
    plane: XdsTestControlPlane, client: BareClient
) -> None:
    plane.set_snapshot(
        "v1",
        snapshot(
            cluster(A),
            cluster(B),
            assignment(A, [("10.0.0.1", 80)]),
            assignment(B, [("10.0.0.2", 80)]),
        ),
    )
    client.send(TYPE_CLUSTER)
    cds = client.receive()
    assert cds.version_info == "v1" and names_of(cds, cluster_pb2.Cluster) == [A, B]
    client.send(TYPE_CLUSTER, version="v1", nonce=cds.nonce)
    client.send(TYPE_ENDPOINT, names=[B])
    eds = client.receive()
    assert names_of(eds, endpoint_pb2.ClusterLoadAssignment) == [B]  # only what was named
    client.send(TYPE_ENDPOINT, names=[B], version="v1", nonce=eds.nonce)
    plane.wait_acked("v1", [TYPE_CLUSTER, TYPE_ENDPOINT], node_id=NODE.id, timeout=5)
    plane.set_snapshot("v2", snapshot(cluster(A)))  # pushed without being asked
    pushed = client.receive()
    assert pushed.version_info == "v2" and pushed.nonce != cds.nonce
    assert names_of(pushed, cluster_pb2.Cluster) == [A]


def test_a_version_per_type_pushes_only_the_type_that_changed(
    plane: XdsTestControlPlane, client: BareClient
) -> None:
    """istiod's endpoint-only push: clusters keep their version and are not sent again."""
    plane.set_snapshot("v1", snapshot(cluster(A), assignment(A, [("10.0.0.1", 80)])))
    client.send(TYPE_CLUSTER)
    cds = client.receive()
    client.send(TYPE_CLUSTER, version="v1", nonce=cds.nonce)
    client.send(TYPE_ENDPOINT, names=[A])
    eds = client.receive()
    client.send(TYPE_ENDPOINT, names=[A], version="v1", nonce=eds.nonce)
    plane.wait_acked("v1", [TYPE_CLUSTER, TYPE_ENDPOINT], node_id=NODE.id, timeout=5)
    published = plane.set_snapshot(
        {TYPE_ENDPOINT: "e2"}, snapshot(cluster(A), assignment(A, [("10.0.0.9", 80)]))
    )
    pushed = client.receive()
    assert pushed.type_url == TYPE_ENDPOINT and pushed.version_info == "e2"
    client.send(TYPE_ENDPOINT, names=[A], version="e2", nonce=pushed.nonce)
    plane.wait_acked("e2", [TYPE_ENDPOINT], node_id=NODE.id, timeout=5)
    assert plane.current(TYPE_CLUSTER)[0] == "v1"  # untouched, so never resent
    ack = next(r for r in plane.replies(NODE.id) if r.version == "e2")
    assert ack.at >= published  # replies carry when they arrived, for the scale bench


def test_a_nack_is_recorded_with_its_message_and_is_not_an_ack(
    plane: XdsTestControlPlane, client: BareClient
) -> None:
    plane.set_snapshot("v1", snapshot(cluster(A)))
    client.send(TYPE_CLUSTER)
    cds = client.receive()
    client.send(TYPE_CLUSTER, version="", nonce=cds.nonce, error="clusters[0]: bad lb_policy")
    nack = plane.wait_nacked(TYPE_CLUSTER, node_id=NODE.id, timeout=5)
    assert nack.error == "clusters[0]: bad lb_policy" and nack.nonce == cds.nonce
    with pytest.raises(AssertionError, match="did not ACK"):
        plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE.id, timeout=0.3)


def test_it_restarts_on_the_same_port(plane: XdsTestControlPlane) -> None:
    port = plane.port
    assert port != 0
    plane.stop()
    plane.set_snapshot("v3", snapshot(cluster(B)))
    plane.start()
    assert plane.port == port
    again = BareClient(plane.address)
    try:
        again.send(TYPE_CLUSTER)
        assert again.receive().version_info == "v3"
    finally:
        again.close()


class BareDeltaClient(BareClient):
    """The Delta stream, driven by hand."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._requests = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._responses = stub.DeltaAggregatedResources(self._pending())

    def send_delta(
        self, type_url: str, subscribe=(), unsubscribe=(), nonce="", error="", held=None
    ):
        request = discovery_pb2.DeltaDiscoveryRequest(
            node=NODE,
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=held or {},
        )
        if error:
            request.error_detail.message = error
        self._requests.put(request)


@pytest.fixture
def delta_client(plane: XdsTestControlPlane) -> Iterator[BareDeltaClient]:
    bare = BareDeltaClient(plane.address)
    try:
        yield bare
    finally:
        bare.close()


def delta_names(response) -> list[str]:
    return [r.name for r in response.resources]


def test_delta_sends_what_changed_and_the_names_removed(
    plane: XdsTestControlPlane, delta_client: BareDeltaClient
) -> None:
    plane.set_snapshot("v1", snapshot(cluster(A), cluster(B)))
    delta_client.send_delta(TYPE_CLUSTER)  # wildcard
    first = delta_client.receive()
    assert (first.system_version_info, delta_names(first)) == ("v1", [A, B])
    delta_client.send_delta(TYPE_CLUSTER, nonce=first.nonce)
    plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE.id, timeout=5)
    plane.set_snapshot("v2", snapshot(cluster(A), cluster(B, connect_timeout="2s")))
    changed = delta_client.receive()
    assert delta_names(changed) == [B] and list(changed.removed_resources) == []
    delta_client.send_delta(TYPE_CLUSTER, nonce=changed.nonce)
    plane.set_snapshot("v3", snapshot(cluster(B, connect_timeout="2s")))
    removed = delta_client.receive()
    assert delta_names(removed) == [] and list(removed.removed_resources) == [A]


def test_delta_a_nack_restores_what_the_sidecar_holds(
    plane: XdsTestControlPlane, delta_client: BareDeltaClient
) -> None:
    plane.set_snapshot("v1", snapshot(cluster(A)))
    delta_client.send_delta(TYPE_CLUSTER)
    first = delta_client.receive()
    delta_client.send_delta(TYPE_CLUSTER, nonce=first.nonce)
    plane.set_snapshot("v2", snapshot(cluster(B)))  # A removed, B added: NACKed
    bad = delta_client.receive()
    delta_client.send_delta(TYPE_CLUSTER, nonce=bad.nonce, error="no")
    nack = plane.wait_nacked(TYPE_CLUSTER, node_id=NODE.id, timeout=5)
    assert (nack.version, nack.error) == ("v1", "no")
    plane.set_snapshot("v3", snapshot(cluster(B)))  # the same again: still sent, A removed
    again = delta_client.receive()
    assert delta_names(again) == [B] and list(again.removed_resources) == [A]


def test_delta_named_subscriptions_and_initial_versions(
    plane: XdsTestControlPlane, delta_client: BareDeltaClient
) -> None:
    one, two = assignment(A, [("10.0.0.1", 80)]), assignment(B, [("10.0.0.2", 80)])
    plane.set_snapshot("v1", snapshot(one, two))
    delta_client.send_delta(TYPE_ENDPOINT, subscribe=[A])
    first = delta_client.receive()
    assert delta_names(first) == [A]
    delta_client.send_delta(TYPE_ENDPOINT, nonce=first.nonce)
    delta_client.send_delta(TYPE_ENDPOINT, subscribe=[B], unsubscribe=[A])
    assert delta_names(delta_client.receive()) == [B]
    # A new stream that already holds A at its version is sent nothing for A.
    again = BareDeltaClient(plane.address)
    try:
        again.send_delta(TYPE_ENDPOINT, subscribe=[A, B], held={A: first.resources[0].version})
        assert delta_names(again.receive()) == [B]
    finally:
        again.close()
