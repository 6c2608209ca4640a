"""Live xDS updates under load: the mesh changes under an open-loop client and no request fails.

A client pod's sidecar is driven by the test control plane while h2load sends a fixed rate of
requests (open loop: the rate does not slow down when the proxy does). The control plane
publishes 50 versions that move endpoints (EDS), reweigh routes (RDS) and add and remove a
service's cluster and listener (CDS, LDS), one NACKed version among them, and is then
stopped and started again; every request must succeed.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from support.lab import wait_until
from support.mesh_lab import GATEWAY_V4, MeshLab, Pod
from support.prereq import require_root_and_tools
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
    tcp_listener,
    virtual_host,
    virtual_outbound,
)

from bench.load import parse_h2load

ALL_TYPES = [TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE]
WEB_VIP, EXTRA_VIP = "10.96.0.7", "10.96.0.30"
WEB = outbound(8080, "web.default")
WEB_V1 = outbound(8080, "web.default", "v1")
WEB_V2 = outbound(8080, "web.default", "v2")
EXTRA = outbound(9000, "extra.default")
RATE = 100  # requests per second, over 4 connections
REQUESTS = 2000  # 20 s of load
UPDATES = 50


def version(n: int, pods: list[Pod], bad: bool = False) -> dict:
    """Version n of the mesh: each differs from the one before in endpoints and weights, and
    every fifth one in its clusters and listeners too."""
    one, two, three = pods
    v1 = [one] if n % 2 else [one, three]
    v2 = [two, three] if n % 3 else [two]
    weight = (n * 17) % 101
    split = {
        "match": {"prefix": "/canary"},
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {"name": WEB_V1, "weight": weight},
                    {"name": WEB_V2, "weight": 100 - weight},
                ]
            }
        },
    }
    resources = [
        passthrough_cluster(),
        cluster(WEB, lb_policy="MAGLEV") if bad else cluster(WEB),
        cluster(WEB_V1),
        cluster(WEB_V2),
        assignment(WEB, sorted({(p.ip, 8080) for p in v1 + v2})),
        assignment(WEB_V1, [(p.ip, 8080) for p in v1]),
        assignment(WEB_V2, [(p.ip, 8080) for p in v2]),
        virtual_outbound(),
        http_listener(8080),
        route_config(
            "8080",
            [virtual_host("web.default", 8080, WEB_VIP, [split, route(WEB_V1 if n % 2 else WEB)])],
        ),
    ]
    if n % 5 == 0:  # a service that comes and goes
        resources += [
            cluster(EXTRA),
            assignment(EXTRA, [(three.ip, 8080)]),
            tcp_listener(EXTRA_VIP, 9000, EXTRA),
        ]
    return snapshot(*resources)


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_fifty_updates_a_nack_and_a_control_plane_restart_fail_no_request(
    mesh_lab: MeshLab, api_type: str
) -> None:
    require_root_and_tools("h2load")
    pods = [mesh_lab.add_pod(f"web{n}", 10 + n) for n in (1, 2, 3)]
    for pod in pods:
        pod.serve_http11(8080, pod.name)
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=mesh_lab.bridge_ns.name)
    plane.start()
    try:
        run_under_load(mesh_lab, plane, pods, api_type)
    finally:
        plane.stop()


def run_under_load(
    lab: MeshLab, plane: XdsTestControlPlane, pods: list[Pod], api_type: str
) -> None:
    node = "sidecar~10.88.0.20~client-1.default~default.svc.cluster.local"
    config = lab.write_config(
        "bootstrap.json", json.dumps(bootstrap(node, plane.address, api_type))
    )
    plane.set_snapshot("v0", version(0, pods))
    client = lab.add_pod("client", 20)
    lab.intercept(client)
    lab.start_sidecar(client, None, "--bootstrap", str(config))
    plane.wait_acked("v0", ALL_TYPES, node_id=node)
    load = client.spawn(
        "h2load",
        "--h1",
        "-c",
        "4",
        "-t",
        "1",
        "-m",
        "1",
        "--rps",
        str(RATE / 4),
        "-n",
        str(REQUESTS),
        f"http://{WEB_VIP}:8080/",
        f"http://{WEB_VIP}:8080/canary",
    )
    for n in range(1, UPDATES + 1):
        if n == UPDATES // 2:  # one version Detour cannot run: NACKed, the mesh stays
            before = len(plane.replies(node))
            plane.set_snapshot(f"bad{n}", version(n, pods, bad=True))
            wait_until(
                lambda before=before: any(not r.acked for r in plane.replies(node)[before:]),
                10,
                "the NACK",
            )
        plane.set_snapshot(f"v{n}", version(n, pods))
        plane.wait_acked(f"v{n}", ALL_TYPES, node_id=node)
    # The control plane goes away and comes back with one more version.
    plane.stop()
    plane.set_snapshot("after", version(UPDATES + 1, pods))
    plane.start()
    plane.wait_acked("after", ALL_TYPES, node_id=node, timeout=40)
    assert load.poll() is None, "the updates outlasted the load: raise REQUESTS"
    try:
        stdout, stderr = load.communicate(timeout=REQUESTS / RATE + 30)
    except subprocess.TimeoutExpired:
        load.kill()
        raise
    result = parse_h2load(stdout)
    assert result["total"] == REQUESTS, stdout + stderr
    assert (result["succeeded"], result["ok_2xx"], result["errors"]) == (REQUESTS, REQUESTS, 0), (
        stdout
    )
