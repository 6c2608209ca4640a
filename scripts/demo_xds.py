"""make demo DEMO=xds: two nodes, one control plane, and a service moving between them.

Node 1 (a bridge) holds the client and backend web-a; node 2 (a second bridge, routed to the
first as two hosts of a cluster are) holds web-b and web-c. Every pod has interception and a
sidecar started with ``--bootstrap`` and no mesh file: its whole config comes over Delta ADS
from one control plane — here the test control plane (tests/support/xds_control_plane.py;
istiod cannot be built on this machine), serving istiod-shaped resources. The client's plain
curl calls ``web`` by name; an EDS change moves the service from node 1 to node 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.mesh_lab import MeshLab  # noqa: E402
from support.xds_control_plane import XdsTestControlPlane  # noqa: E402
from support.xds_two_nodes import GATEWAY_V4, TwoNodes, start  # noqa: E402


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def calls(mesh: TwoNodes, count: int = 6) -> None:
    for n in range(1, count + 1):
        reply = mesh.client.curl("http://web:8080/")
        try:
            who = json.loads(reply)["label"]
        except ValueError:
            who = reply
        print(f"curl http://web:8080/  #{n} -> {who}")


def main() -> int:
    started = time.monotonic()
    lab = MeshLab.create()
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=lab.bridge_ns.name)
    try:
        step("one control plane, two nodes, four pods with sidecars (config over Delta ADS)")
        plane.start()
        print(f"control plane (test) on {plane.address}, in node 1's bridge namespace")
        mesh = start(lab, plane)
        mesh.publish("v1", mesh.node1)
        for pod in mesh.pods:
            node = 2 if pod in mesh.node2 else 1
            print(f"node {node}  {pod.name:<7} {pod.ip:<12} sidecar: --bootstrap, no mesh file")

        step("version v1: service web.default has one endpoint, web-a on node 1")
        calls(mesh)

        step("version v2 (EDS): web.default moves to web-b and web-c on node 2")
        mesh.publish("v2", mesh.node2)
        calls(mesh)

        step("what the client's sidecar holds (curl 127.0.0.1:15000/config_dump, its xds part)")
        _, body = mesh.client.admin("/config_dump")
        xds = json.loads(body)["xds"]
        for key in ("server", "variant", "node", "connected", "versions", "nacks", "applied"):
            print(f"{key:<10} {xds[key]}")
    finally:
        step("tearing down")
        for pod in lab.pods:
            if pod.sidecar is not None and pod.sidecar.poll() is None:
                pod.sidecar.terminate()
        plane.stop()
        lab.destroy_quietly()
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
