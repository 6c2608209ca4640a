"""Shared by the HTTP/2 and gRPC end-to-end tests: peers that need the project's .venv python
(h2, grpcio), a mesh with one service whose port protocol a test chooses, and the metrics a
test reads back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from support.http_mesh import VIP
from support.lab import VENV_BIN
from support.mesh_lab import MeshLab, Pod

SUPPORT = Path(__file__).resolve().parent
GRPC_PEERS = SUPPORT / "grpc_peers.py"
H2_PEERS = SUPPORT / "h2_peers.py"
VENV_PYTHON = str(VENV_BIN / "python")
GRPC_PORT = 9000
GRPC_TARGET = f"{VIP}:{GRPC_PORT}"


def start_venv_peer(pod: Pod, script: Path, *args: str) -> subprocess.Popen:
    """A peer run by the .venv interpreter as the app uid, returned once it printed "ready"."""
    proc = pod.spawn(VENV_PYTHON, str(script), *args)
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"{script.name} {args} did not start: {proc.stderr.read()}"
    return proc


def one_service(backends: list[Pod], port: int, protocol: str, **extra) -> dict:
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": VIP,
                "ports": [{"name": f"{protocol}-{port}", "port": port, "protocol": protocol}],
                "endpoints": [
                    {"address": pod.ip, "labels": {"version": pod.name}} for pod in backends
                ],
                "traffic_policy": {"connect_timeout": "1s"},
                **extra,
            }
        ],
    }


def start_mesh(lab: MeshLab, client: Pod, config: dict, *extra: str) -> None:
    lab.intercept(client)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)), *extra)


def grpc_call(
    client: Pod,
    method: str,
    request: str,
    *extra: str,
    target: str = GRPC_TARGET,
    timeout: float = 30,
) -> list[dict]:
    """Unary calls with the grpcio client (``--count N``, ``--timeout S``): one dict each."""
    argv = (VENV_PYTHON, str(GRPC_PEERS), "call", target, method, request, *extra)
    done = client.run(*argv, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def grpc_peer(client: Pod, *args: str, timeout: float = 30) -> dict:
    done = client.run(VENV_PYTHON, str(GRPC_PEERS), *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def prometheus_sum(client: Pod, metric: str, *label_filters: str) -> float:
    """The sum of a metric's series whose label text contains every filter."""
    code, text = client.admin("/stats/prometheus")
    assert code == 200
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(f in line for f in label_filters):
            total += float(line.rsplit(" ", 1)[1])
    return total
