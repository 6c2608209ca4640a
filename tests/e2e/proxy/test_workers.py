"""Workers: with ``--concurrency 1`` the sidecar is one process that does everything; with more,
worker processes share the listeners (SO_REUSEPORT), the supervisor sums their metrics and
replaces a worker that dies, on the same sockets. Both report the same stats for the same
traffic."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import yaml
from support.lab import wait_until
from support.mesh_lab import PROXY_UID, MeshLab, Pod, stat

VIP = "10.96.0.10"


def _workers(pod: Pod) -> list[int]:
    """The sidecar's worker processes: the children of the detour-proxy process (the Popen's
    pid is detour-proxy itself: sh, ip netns exec and setpriv all exec)."""
    pid = pod.sidecar.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _proxy_processes(pod: Pod) -> list[int]:
    """Every process of the proxy's uid in the pod's cgroup, whoever started it."""
    found = []
    for pid in (pod.cgroup / "cgroup.procs").read_text().split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:  # exited meanwhile
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uids.split()[1]) == PROXY_UID:
            found.append(int(pid))
    return found


def _service(*pods: Pod) -> str:
    config = {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": VIP,
                "ports": [{"port": 8080, "protocol": "tcp"}],
                "endpoints": [{"address": pod.ip} for pod in pods],
            }
        ],
    }
    return yaml.safe_dump(config)


def _prometheus(pod: Pod) -> dict[str, float]:
    """The merged metrics on :15020, as a user's scraper gets them: series -> value."""
    done = pod.run("curl", "-sS", "--max-time", "5", "http://127.0.0.1:15020/stats/prometheus")
    assert done.returncode == 0, done.stderr
    series = {}
    for line in done.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def test_two_workers_share_the_load_and_a_dead_one_is_replaced(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    backends = [mesh_lab.add_pod(f"backend{n}", 10 + n) for n in (1, 2)]
    for pod in backends:
        pod.serve_http(8080, pod.name)
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(
        client, mesh_lab.write_config("mesh.yaml", _service(*backends)), "--concurrency", "2"
    )
    workers = _workers(client)
    assert len(workers) == 2
    assert sorted(_proxy_processes(client)) == sorted([client.sidecar_pid(), *workers])

    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(20)]
    assert {r.split(" ")[0] for r in replies} == {"backend1", "backend2"}
    assert stat(client, "upstream_cx_total") == 20, "the supervisor sums both workers"

    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: stat(client, "worker_restarts_total") == 1, 10, "a worker restart")
    replacement = _workers(client)
    assert len(replacement) == 2 and workers[0] not in replacement
    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(20)]
    assert not [r for r in replies if r.startswith("ERROR")], replies
    _drain_listeners_refuses_new_connections(client)


def _drain_listeners_refuses_new_connections(client: Pod) -> None:
    code, listeners = client.admin("/listeners")
    assert code == 200 and "virtualOutbound outbound 0.0.0.0:15001" in listeners, listeners
    assert client.admin("/drain_listeners", "POST")[0] == 200
    assert client.curl(f"http://{VIP}:8080/").startswith("ERROR curl: (7)"), "refused at once"
    assert client.admin("/listeners") == (200, "")


def test_one_worker_is_one_process_that_serves_reloads_reports_and_drains(
    mesh_lab: MeshLab,
) -> None:
    client = mesh_lab.add_pod("client", 10)
    backends = [mesh_lab.add_pod(f"backend{n}", 10 + n) for n in (1, 2)]
    for pod in backends:
        pod.serve_http(8080, pod.name)
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", _service(backends[0])))
    sidecar = client.sidecar_pid()
    assert _proxy_processes(client) == [sidecar] and _workers(client) == []

    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(10)]
    assert [r.split(" ")[0] for r in replies] == ["backend1"] * 10, replies
    assert stat(client, "upstream_cx_total") == 10
    assert stat(client, "workers_alive") == 1
    metrics = _prometheus(client)
    opened = sum(v for k, v in metrics.items() if k.startswith("istio_tcp_connections_opened"))
    assert opened == 10, "Istio's metrics on :15020"
    code, clusters = client.admin("/clusters")
    assert code == 200
    assert (
        f"outbound|8080||backend.default.svc.cluster.local::{backends[0].ip}:8080::cx_total::10"
        in clusters
    )

    mesh_lab.write_config("mesh.yaml", _service(*backends))
    wait_until(lambda: stat(client, "config_reload_total") == 1, 5, "the reload")
    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(10)]
    assert {r.split(" ")[0] for r in replies} == {"backend1", "backend2"}, replies
    assert _proxy_processes(client) == [sidecar], "still one process after a reload"
    _drain_listeners_refuses_new_connections(client)

    os.kill(sidecar, signal.SIGTERM)
    assert client.sidecar.wait(5) == 0
    assert client.ready_code() == 0, "nothing listens any more"
    assert _proxy_processes(client) == []


def test_one_and_two_workers_report_the_same_stats_for_the_same_traffic(
    mesh_lab: MeshLab,
) -> None:
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("backend1", 11)
    backend.serve_http(8080, backend.name)
    mesh_lab.intercept(client)
    config = mesh_lab.write_config("mesh.yaml", _service(backend))
    seen = {}
    for workers in (1, 2):
        mesh_lab.start_sidecar(client, config, "--concurrency", str(workers))
        replies = [client.curl(f"http://{VIP}:8080/") for _ in range(12)]
        assert not [r for r in replies if r.startswith("ERROR")], replies
        wait_until(lambda: stat(client, "downstream_cx_active") == 0, 5, "connections closed")
        code, body = client.admin("/stats?format=json")
        assert code == 200
        stats = {row["name"]: row["value"] for row in json.loads(body)["stats"]}
        assert stats.pop("workers_alive") == workers
        seen[workers] = (stats, set(_prometheus(client)))
        os.kill(client.sidecar_pid(), signal.SIGTERM)
        assert client.sidecar.wait(5) == 0

    (one, series_one), (two, series_two) = seen[1], seen[2]
    assert one == two
    assert series_one == series_two
