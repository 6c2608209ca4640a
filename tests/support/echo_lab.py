"""The reliability suite's smallest mesh: a client pod calling a TCP echo service on a VIP,
and the hostile or simply demanding clients of tests/support/hostile_clients.py run in it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from support.lab import SYSTEM_PYTHON
from support.mesh_lab import MeshLab, Pod

CLIENTS = Path(__file__).resolve().parent / "hostile_clients.py"
VIP = "10.96.0.20"
ECHO_PORT = 7000


def echo_mesh(endpoint: str, target_port: int = ECHO_PORT) -> dict:
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "echo",
                "vip": VIP,
                "ports": [
                    {
                        "name": "tcp",
                        "port": ECHO_PORT,
                        "protocol": "tcp",
                        "target_port": target_port,
                    }
                ],
                "endpoints": [{"address": endpoint}],
                "traffic_policy": {"connect_timeout": "1s"},
            }
        ],
    }


def bring_up(
    lab: MeshLab, config: dict | None = None, sidecar_args: tuple[str, ...] = ()
) -> tuple[Pod, Pod]:
    """A client pod (init + sidecar) and an echo server pod (no sidecar) behind VIP."""
    client = lab.add_pod("client", 10)
    server = lab.add_pod("server", 20)
    server.serve_peer("echo", str(ECHO_PORT))
    lab.intercept(client)
    config = config or echo_mesh(server.ip)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)), *sidecar_args)
    return client, server


def run_client(pod: Pod, *args: object, timeout: float = 120) -> dict:
    done = pod.run(SYSTEM_PYTHON, str(CLIENTS), *map(str, args), timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
