"""The sidecar with no services: intercepted connections pass through (ALLOW_ANY), counted."""

from __future__ import annotations

from support.mesh_lab import MeshLab

# Outbound interception: every test here runs under iptables and eBPF (conftest.py).
OUTBOUND = True


def test_unknown_destination_passes_through_and_is_counted(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    server = mesh_lab.add_pod("server", 20)
    server.serve_http(8080, "server")
    server.serve_http(8080, "server", family=6)
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client)
    assert client.curl(f"http://{server.ip}:8080/") == "server original=none"
    assert client.curl(f"http://[{server.ip6}]:8080/") == "server original=none"
    code, stats = client.admin("/stats?filter=downstream_cx_total")
    assert code == 200
    assert "downstream_cx_total.listener=virtualOutbound: 2" in stats
