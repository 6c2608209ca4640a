"""Several workers share the listeners (SO_REUSEPORT); the supervisor sums their metrics and
replaces a worker that dies, on the same sockets."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import yaml
from support.lab import wait_until
from support.mesh_lab import MeshLab, Pod

VIP = "10.96.0.10"


def _workers(pod: Pod) -> list[int]:
    """The sidecar's worker processes: the children of the detour-proxy process (the Popen's
    pid is detour-proxy itself: sh, ip netns exec and setpriv all exec)."""
    pid = pod.sidecar.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _stat(pod: Pod, name: str) -> int:
    code, body = pod.admin(f"/stats?filter=^{name}")
    assert code == 200
    return sum(int(line.rsplit(": ", 1)[1]) for line in body.splitlines() if line)


def test_two_workers_share_the_load_and_a_dead_one_is_replaced(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    backends = [mesh_lab.add_pod(f"backend{n}", 10 + n) for n in (1, 2)]
    for pod in backends:
        pod.serve_http(8080, pod.name)
    config = {
        "services": [
            {
                "name": "backend",
                "vip": VIP,
                "ports": [{"port": 8080}],
                "endpoints": [{"address": pod.ip} for pod in backends],
            }
        ]
    }
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(
        client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)), "--concurrency", "2"
    )
    workers = _workers(client)
    assert len(workers) == 2

    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(20)]
    assert {r.split(" ")[0] for r in replies} == {"backend1", "backend2"}
    assert _stat(client, "upstream_cx_total") == 20, "the supervisor sums both workers"

    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: _stat(client, "worker_restarts_total") == 1, 10, "a worker restart")
    replacement = _workers(client)
    assert len(replacement) == 2 and workers[0] not in replacement
    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(20)]
    assert not [r for r in replies if r.startswith("ERROR")], replies
