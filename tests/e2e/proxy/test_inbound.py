"""Inbound interception (REDIRECT): a server pod's sidecar receives connections for its app.

The server pod has init (default REDIRECT, every inbound port captured) and a sidecar whose
workload declares its inbound ports; the client pod has neither, like a caller outside the
mesh. The sidecar hands declared ports to the app from 127.0.0.6 (Istio's inbound source) and
refuses the others.
"""

from __future__ import annotations

import pytest
import yaml
from support.mesh_lab import MeshLab, stat


@pytest.mark.vm
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


def test_ipv6_inbound_reaches_the_app_without_looping(mesh_lab: MeshLab) -> None:
    """The sidecar forwards IPv6 inbound from ::6, which init puts on lo: its own connection
    to the pod's address is then not captured again (without it, it would loop)."""
    server = mesh_lab.add_pod("server", 20)
    client = mesh_lab.add_pod("client", 10)
    server.serve_http(8080, "app6", family=6)
    config = {"workload": {"name": "server", "inbound_ports": [8080]}}
    mesh_lab.intercept(server)
    mesh_lab.start_sidecar(server, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    assert "inet6 ::6/128" in server.run("ip", "addr", "show", "dev", "lo", uid=None).stdout
    assert client.curl(f"http://[{server.ip6}]:8080/").startswith("app6 ")
    assert stat(server, "downstream_cx_total.listener=virtualInbound") == 1
    assert server.ns.detour_init("cleanup").returncode == 0
    assert "::6" not in server.run("ip", "addr", "show", "dev", "lo", uid=None).stdout
