"""TPROXY inbound: the app behind the sidecar sees the real client address, not 127.0.0.6."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.lab import PEERS, SYSTEM_PYTHON, wait_until
from support.mesh_lab import DETOUR_PROXY, MeshLab


@pytest.mark.parametrize("workers", [1, 2])  # in-process, and worker processes
@pytest.mark.vm
def test_tproxy_inbound_preserves_the_client_source_address(
    mesh_lab: MeshLab, workers: int
) -> None:
    server = mesh_lab.add_pod("server", 20)
    client = mesh_lab.add_pod("client", 10)  # no sidecar: a plain caller from another pod
    app = server.spawn(SYSTEM_PYTHON, str(PEERS), "whoami", "8080", "app")
    assert app.stdout.readline().strip() == "ready"
    config = {"workload": {"name": "server", "inbound_ports": [8080]}}
    mesh_lab.intercept(server, "--mode", "TPROXY")
    mesh_lab.start_sidecar(
        server,
        mesh_lab.write_config("server.yaml", yaml.safe_dump(config)),
        "--inbound-mode",
        "TPROXY",
        "--concurrency",
        str(workers),
    )
    reply = client.curl(f"http://{server.ip}:8080/")
    assert reply.startswith(f"app peer={client.ip}:"), reply
    code, stats = server.admin("/stats?filter=^downstream_cx_total")
    assert code == 200 and "listener=virtualInbound: 1" in stats


def test_tproxy_inbound_http_is_routed_and_authorized_with_the_client_address(
    mesh_lab: MeshLab,
) -> None:
    """An HTTP inbound port under TPROXY gets the HTTP router (policy, request metrics) and
    its upstream connections still come from the client's own address."""
    server = mesh_lab.add_pod("server", 20)
    client = mesh_lab.add_pod("client", 10)
    app = server.spawn(SYSTEM_PYTHON, str(PEERS), "whoami", "8080", "app")
    assert app.stdout.readline().strip() == "ready"
    deny = {
        "name": "no-secrets",
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/secret*"]}}]}],
    }
    config = {
        "workload": {
            "name": "server",
            "inbound_ports": [{"port": 8080, "protocol": "http"}],
            "authorization_policies": [deny],
        }
    }
    mesh_lab.intercept(server, "--mode", "TPROXY")
    mesh_lab.start_sidecar(
        server,
        mesh_lab.write_config("server.yaml", yaml.safe_dump(config)),
        "--inbound-mode",
        "TPROXY",
    )
    reply = client.curl(f"http://{server.ip}:8080/")
    assert reply.startswith(f"app peer={client.ip}:"), reply
    assert client.curl(f"http://{server.ip}:8080/secret/x") == "RBAC: access denied"
    code, text = server.admin("/stats/prometheus")
    assert code == 200
    destination = [
        line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert {line.split('response_code="')[1].split('"')[0] for line in destination} == {
        "200",
        "403",
    }, destination


def test_run_as_binds_as_root_then_serves_as_the_proxy_uid(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    server = mesh_lab.add_pod("server", 20)
    server.serve_http(8080, "server")
    mesh_lab.intercept(client)
    client.sidecar = client.spawn(DETOUR_PROXY, "--concurrency", "1", "--run-as", "1337", uid=None)
    wait_until(
        lambda: (
            client.run("curl", "-s", "http://127.0.0.1:15021/healthz/ready", uid=None).stdout
            == "LIVE\n"
        ),
        15,
        "readiness",
    )
    status = Path(f"/proc/{client.sidecar.pid}/status").read_text()
    assert "Uid:\t1337\t1337\t1337\t1337" in status
    assert client.curl(f"http://{server.ip}:8080/") == "server original=none"


def test_tproxy_with_run_as_is_refused_with_the_reason(mesh_lab: MeshLab) -> None:
    pod = mesh_lab.add_pod("server", 20)
    done = pod.run(DETOUR_PROXY, "--inbound-mode", "TPROXY", "--run-as", "1337", uid=None)
    assert done.returncode == 2
    assert "CAP_NET_ADMIN" in done.stderr
