"""A two-node mesh driven by one test control plane, for its e2e test and ``make demo
DEMO=xds``: a client and one backend on node 1, two backends on node 2, every pod with
interception and a sidecar whose config comes from the control plane (no mesh file). The
service ``web`` moves between nodes by an EDS change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from support.mesh_lab import GATEWAY_V4, MeshLab, Pod
from support.xds_control_plane import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    XdsTestControlPlane,
)
from support.xds_snapshots import (
    assignment,
    bootstrap,
    cluster,
    http_listener,
    outbound,
    passthrough_cluster,
    route,
    route_config,
    snapshot,
    virtual_host,
    virtual_outbound,
)

WEB_VIP = "10.96.0.7"
WEB = outbound(8080, "web.default")
ALL_TYPES = [TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE]


def node_id(pod: Pod) -> str:
    return f"sidecar~{pod.ip}~{pod.name}-1.default~default.svc.cluster.local"


def web_snapshot(endpoints: list[Pod]) -> dict:
    return snapshot(
        passthrough_cluster(),
        cluster(WEB),
        assignment(WEB, [(p.ip, 8080) for p in endpoints]),
        virtual_outbound(),
        http_listener(8080),
        route_config("8080", [virtual_host("web.default", 8080, WEB_VIP, [route(WEB)])]),
    )


@dataclass
class TwoNodes:
    lab: MeshLab
    plane: XdsTestControlPlane
    client: Pod
    node1: list[Pod] = field(default_factory=list)  # the backends on node 1
    node2: list[Pod] = field(default_factory=list)

    @property
    def pods(self) -> list[Pod]:
        return [self.client, *self.node1, *self.node2]

    def publish(self, version: str, endpoints: list[Pod]) -> None:
        """Serve the web service on ``endpoints``; wait until every sidecar ACKed it."""
        self.plane.set_snapshot(version, web_snapshot(endpoints))
        for pod in self.pods:
            self.plane.wait_acked(version, ALL_TYPES, node_id=node_id(pod))


def start(lab: MeshLab, plane: XdsTestControlPlane) -> TwoNodes:
    """Pods, interception and sidecars on two nodes; the control plane serves node 1's
    backend first."""
    node2 = lab.add_node()
    mesh = TwoNodes(lab, plane, lab.add_pod("client", 10))
    mesh.node1.append(lab.add_pod("web-a", 11))
    mesh.node2 += [lab.add_pod("web-b", 12, node2), lab.add_pod("web-c", 13, node2)]
    plane.set_snapshot("v1", web_snapshot(mesh.node1))
    for pod in mesh.pods:
        if pod is not mesh.client:
            pod.serve_http11(8080, pod.name)
        config = lab.write_config(
            f"{pod.name}.bootstrap.json",
            json.dumps(bootstrap(node_id(pod), plane.address, "DELTA_GRPC")),
        )
        lab.intercept(pod, *(["--capture-dns"] if pod is mesh.client else []))
        lab.start_sidecar(pod, None, "--bootstrap", str(config))
    return mesh


__all__ = ["GATEWAY_V4", "WEB_VIP", "TwoNodes", "node_id", "start", "web_snapshot"]
