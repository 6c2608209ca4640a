"""Inbound interception (REDIRECT): a server pod's sidecar receives connections for its app.

The server pod has init (default REDIRECT, every inbound port captured) and a sidecar whose
workload declares its inbound ports; the client pod has neither, like a caller outside the
mesh. The sidecar hands declared ports to the app from 127.0.0.6 (Istio's inbound source) and
refuses the others.
"""

from __future__ import annotations

import yaml
from support.mesh_lab import MeshLab, stat


def test_inbound_reaches_the_app_from_127_0_0_6_and_undeclared_ports_are_refused(
    mesh_lab: MeshLab,
) -> None:
    server = mesh_lab.add_pod("server", 20)
    client = mesh_lab.add_pod("client", 10)
    server.serve_peer("whoami", "8080", "app8080")
    server.serve_peer("whoami", "9090", "app9090")
    config = {"workload": {"name": "server", "namespace": "default", "inbound_ports": [8080]}}
    mesh_lab.intercept(server)
    mesh_lab.start_sidecar(server, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))

    reply = client.curl(f"http://{server.ip}:8080/")
    label, peer = reply.split(" ")
    assert label == "app8080", reply
    assert peer.startswith("peer=127.0.0.6:"), "the app sees the sidecar's inbound source"
    assert stat(server, "downstream_cx_total.listener=virtualInbound") == 1

    # The app on 9090 is up (a local call is not intercepted), but 9090 is not declared.
    assert server.curl("http://127.0.0.1:9090/").startswith("app9090 peer=127.0.0.1:")
    assert client.curl(f"http://{server.ip}:9090/").startswith("ERROR")
    assert stat(server, "downstream_cx_refused.listener=virtualInbound") == 1
    assert stat(server, "downstream_cx_total.listener=virtualInbound") == 2
