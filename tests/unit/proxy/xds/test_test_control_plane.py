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
