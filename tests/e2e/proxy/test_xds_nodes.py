"""Two nodes, one control plane: a service moves from one node to the other by EDS.

Node 1 (the lab's bridge) has the client and one backend, node 2 (another bridge, routed to
the first as two hosts are) has two more; every pod's sidecar takes its config from the one
test control plane over Delta ADS. The client calls ``web`` by name with plain curl.
"""

from __future__ import annotations

import json

from support.mesh_lab import MeshLab
from support.xds_control_plane import XdsTestControlPlane
from support.xds_two_nodes import GATEWAY_V4, WEB_VIP, start


def answered_by(reply: str) -> str:
    try:
        return json.loads(reply)["label"]
    except ValueError:
        return reply


def test_a_service_moves_between_nodes_by_an_eds_change(mesh_lab: MeshLab) -> None:
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=mesh_lab.bridge_ns.name)
    plane.start()
    try:
        mesh = start(mesh_lab, plane)
        mesh.publish("v1", mesh.node1)
        client = mesh.client
        assert {answered_by(client.curl("http://web:8080/")) for _ in range(4)} == {"web-a"}
        # Across the nodes: pods on node 2 reach node 1's pods and the other way round.
        far = mesh.node2[0]
        assert answered_by(far.curl(f"http://{mesh.node1[0].ip}:8080/")) == "web-a"
        mesh.publish("v2", mesh.node2)  # the service moves to node 2
        seen = {answered_by(client.curl(f"http://{WEB_VIP}:8080/")) for _ in range(6)}
        assert seen == {"web-b", "web-c"}
        # ... and the sidecars on node 2 run the same mesh, from the same control plane.
        assert answered_by(far.curl(f"http://{WEB_VIP}:8080/")) in {"web-b", "web-c"}
    finally:
        plane.stop()
