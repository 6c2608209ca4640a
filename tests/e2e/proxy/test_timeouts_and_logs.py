"""Idle connections are closed by the idle timeout; the access log tells what happened."""

from __future__ import annotations

import json

import yaml
from support.lab import PEERS, SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, stat

# Outbound interception: every test here runs under iptables and eBPF (conftest.py).
OUTBOUND = True

VIP = "10.96.0.10"


def _service(endpoint: str, **policy) -> str:
    return yaml.safe_dump(
        {
            "services": [
                {
                    "name": "backend",
                    "vip": VIP,
                    "ports": [{"port": 7000}],
                    "endpoints": [{"address": endpoint}],
                    "traffic_policy": policy,
                }
            ]
        }
    )


def test_an_idle_connection_is_closed_and_counted(mesh_lab: MeshLab) -> None:
    client, server = mesh_lab.add_pod("client", 10), mesh_lab.add_pod("server", 20)
    echo = server.spawn(SYSTEM_PYTHON, str(PEERS), "echo", "7000")
    assert echo.stdout.readline().strip() == "ready"
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(
        client, mesh_lab.write_config("m.yaml", _service(server.ip, idle_timeout="1s"))
    )
    done = client.run(
        SYSTEM_PYTHON,
        "-c",
        "import socket,time\n"
        f"s=socket.create_connection(('{VIP}',7000))\n"
        "s.sendall(b'hi'); assert s.recv(2) == b'hi'\n"
        "t=time.monotonic(); s.settimeout(10)\n"
        "assert s.recv(1) == b''\n"
        "print(round(time.monotonic()-t, 1))",
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert 0.4 <= float(done.stdout) <= 3.0, "closed after about one idle timeout"
    assert stat(client, "downstream_cx_idle_timeout") == 1


def test_json_access_log_carries_the_response_flags(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    mesh_lab.intercept(client)
    # 10.88.0.99 answers nothing: the connect times out twice (UT) and the client is reset.
    mesh_lab.start_sidecar(
        client,
        mesh_lab.write_config("m.yaml", _service("10.88.0.99", connect_timeout="300ms")),
        "--access-log",
        "json",
    )
    assert client.curl(f"http://{VIP}:7000/").startswith("ERROR")

    def entries() -> list[dict]:
        lines = client.read_sidecar_log().splitlines()
        return [json.loads(line.split(": ", 2)[2]) for line in lines if "detour.access" in line]

    logged = wait_until(entries, 5, "an access log entry")
    assert logged[0]["response_flags"] == "UT"
    assert logged[0]["original_destination"] == f"{VIP}:7000"
    assert logged[0]["upstream_cluster"] == "outbound|7000||backend.default.svc.cluster.local"
