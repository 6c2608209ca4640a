"""Mesh services through the sidecar: VIP routing, load balancing, failures, limits, metrics.

A client pod (init + sidecar, apps as uid 1000) calls a service's VIP; the service's
endpoints are backend pods running the lab's HTTP peer, which answers with its own name.
"""

from __future__ import annotations

import time

import pytest
import yaml
from support.lab import wait_until
from support.mesh_lab import MeshLab, Pod, interception_agnostic

from proxy.config.loader import parse_mesh

# Outbound interception: every test here runs under iptables and eBPF (conftest.py).
OUTBOUND = True

VIP = "10.96.0.10"
VIP6 = "fd00:96::10"


def service_config(endpoints: list[str], **policy) -> dict:
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": [VIP, VIP6],
                "ports": [{"name": "http", "port": 8080, "protocol": "tcp"}],
                "endpoints": [{"address": address} for address in endpoints],
                "traffic_policy": {
                    "load_balancer": "round_robin",
                    "connect_timeout": "1s",
                    **policy,
                },
            }
        ],
    }


def bring_up(
    lab: MeshLab, backends: int, config: dict | None = None, **policy
) -> tuple[Pod, list[Pod]]:
    client = lab.add_pod("client", 10)
    pods = [lab.add_pod(f"backend{n}", 10 + n) for n in range(1, backends + 1)]
    for pod in pods:
        pod.serve_http(8080, pod.name)
        pod.serve_http(8080, pod.name, family=6)
    config = config or service_config([p.ip for p in pods], **policy)
    path = lab.write_config("mesh.yaml", yaml.safe_dump(config))
    lab.intercept(client)
    lab.start_sidecar(client, path)
    return client, pods


def answered_by(reply: str) -> str:
    return reply.split(" ")[0]


def stat(pod: Pod, name: str) -> int:
    code, body = pod.admin(f"/stats?filter=^{name}")
    assert code == 200
    return sum(int(line.rsplit(": ", 1)[1]) for line in body.splitlines() if line)


@pytest.mark.vm
def test_round_robin_spreads_calls_over_three_endpoints(mesh_lab: MeshLab) -> None:
    client, pods = bring_up(mesh_lab, 3)
    replies = [answered_by(client.curl(f"http://{VIP}:8080/")) for _ in range(9)]
    assert sorted(replies) == sorted([p.name for p in pods] * 3)
    assert replies[:3] == replies[3:6] == replies[6:9], "round robin keeps its order"
    code, clusters = client.admin("/clusters")
    assert code == 200
    for pod in pods:
        assert (
            f"outbound|8080||backend.default.svc.cluster.local::{pod.ip}:8080::cx_total::3"
            in clusters
        )


def test_ipv6_vip_reaches_the_same_service(mesh_lab: MeshLab) -> None:
    config = service_config([])
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("backend1", 11)
    backend.serve_http(8080, "backend1", family=6)
    config["services"][0]["endpoints"] = [{"address": backend.ip6}]
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    assert answered_by(client.curl(f"http://[{VIP6}]:8080/")) == "backend1"


def test_registry_only_refuses_unknown_destinations(mesh_lab: MeshLab) -> None:
    config = service_config([])
    config["mesh"] = {"outbound_traffic_policy": "REGISTRY_ONLY"}
    client = mesh_lab.add_pod("client", 10)
    outside = mesh_lab.add_pod("outside", 30)
    outside.serve_http(8080, "outside")
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    assert client.curl(f"http://{outside.ip}:8080/").startswith("ERROR")
    assert stat(client, "downstream_cx_refused") == 1


@interception_agnostic
def test_a_killed_endpoint_is_ejected_and_no_call_fails(mesh_lab: MeshLab) -> None:
    client, pods = bring_up(
        mesh_lab,
        3,
        outlier_detection={
            "consecutive_5xx_errors": 1,
            "base_ejection_time": "30s",
            "max_ejection_percent": 100,
        },
    )
    victim = pods[1]
    for proc in victim.ns._procs:
        proc.kill()
    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(12)]
    assert all(not r.startswith("ERROR") for r in replies), replies
    assert victim.name not in {answered_by(r) for r in replies}
    _, clusters = client.admin("/clusters")
    assert f"{victim.ip}:8080::health_flags::/failed_outlier_check" in clusters
    assert stat(client, "outlier_detection_ejections_total") == 1


@interception_agnostic
def test_connect_timeout_to_a_blackholed_endpoint(mesh_lab: MeshLab) -> None:
    # 10.88.0.99 is on the bridge's subnet but nobody answers ARP for it: SYNs vanish.
    client, _ = bring_up(mesh_lab, 0, config=service_config(["10.88.0.99"]))
    started = time.monotonic()
    reply = client.curl(f"http://{VIP}:8080/", timeout=10)
    elapsed = time.monotonic() - started
    assert reply.startswith("ERROR")
    assert 1.5 < elapsed < 6, "two attempts of a 1 s connect timeout, not curl's own 10 s"
    assert stat(client, "upstream_cx_connect_timeout") == 2


@interception_agnostic
def test_circuit_breaker_overflow_is_refused_and_counted(mesh_lab: MeshLab) -> None:
    client, pods = bring_up(mesh_lab, 1, circuit_breaker={"max_connections": 1})
    holder = client.spawn(
        "/usr/bin/python3",
        "-c",
        "import socket,sys,time\n"
        f"s=socket.create_connection(('{VIP}',8080))\n"
        "print('open',flush=True); time.sleep(30)",
    )
    assert holder.stdout.readline().strip() == "open"
    wait_until(lambda: stat(client, "upstream_cx_total") == 1, 5, "the first connection")
    assert client.curl(f"http://{VIP}:8080/").startswith("ERROR")
    assert stat(client, "upstream_cx_overflow") == 1
    holder.kill()
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 5, "the holder to close")
    assert answered_by(client.curl(f"http://{VIP}:8080/")) == pods[0].name


def test_direct_connections_to_the_outbound_port_are_refused(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab, 1)
    assert client.curl("http://127.0.0.1:15001/").startswith("ERROR")
    assert client.curl(f"http://{client.ip}:15001/").startswith("ERROR")
    assert stat(client, "downstream_cx_refused") == 2


@interception_agnostic
def test_admin_is_local_and_mutations_are_post_only(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab, 1)
    code, _ = client.admin("/quitquitquit")
    assert code == 405
    assert client.sidecar.poll() is None, "a GET must not stop the sidecar"
    outside = mesh_lab.add_pod("outside", 30)
    assert outside.curl(f"http://{client.ip}:15000/stats").startswith("ERROR")
    code, _ = client.admin("/healthcheck/fail", method="POST")
    assert code == 200
    assert client.ready_code() == 503


@pytest.mark.vm
def test_metrics_agree_with_what_was_sent(mesh_lab: MeshLab) -> None:
    client, _pods = bring_up(mesh_lab, 1)
    payload = 100_000
    done = client.run(
        "/usr/bin/python3",
        "-c",
        "import socket\n"
        f"s=socket.create_connection(('{VIP}',8080))\n"
        f"s.sendall(b'GET / HTTP/1.0\\r\\nX-Pad: ' + b'a'*{payload} + b'\\r\\n\\r\\n')\n"
        "data=b''\n"
        "while chunk := s.recv(65536): data += chunk\n"
        "print(len(data))",
    )
    received = int(done.stdout)
    sent = len(b"GET / HTTP/1.0\r\nX-Pad: \r\n\r\n") + payload
    wait_until(lambda: stat(client, "istio_tcp_connections_closed_total") == 1, 5, "close")
    assert stat(client, "istio_tcp_received_bytes_total") == sent
    assert stat(client, "istio_tcp_sent_bytes_total") == received
    done = client.run("curl", "-s", "http://127.0.0.1:15020/stats/prometheus", uid=None)
    assert "istio_tcp_connections_opened_total{" in done.stdout
    assert 'destination_service="backend.default.svc.cluster.local"' in done.stdout
    assert 'source_workload="client"' in done.stdout


def test_example_mesh_loads_and_names_the_lab_addresses() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "examples" / "mesh.yaml").read_text()
    mesh = parse_mesh(text, "examples/mesh.yaml")
    assert mesh.service("backend.default") is not None


@interception_agnostic
def test_active_health_checks_take_a_dead_endpoint_out_of_rotation(mesh_lab: MeshLab) -> None:
    health = {"interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 2}
    client, pods = bring_up(mesh_lab, 2, health_check=health, connect_attempts=1)
    victim = pods[1]
    for proc in victim.ns._procs:
        proc.kill()

    def flagged() -> bool:
        _, clusters = client.admin("/clusters")
        return f"{victim.ip}:8080::health_flags::/failed_active_hc" in clusters

    wait_until(flagged, 5, "the health checker to mark the dead endpoint")
    replies = [client.curl(f"http://{VIP}:8080/") for _ in range(6)]
    assert {answered_by(r) for r in replies} == {pods[0].name}, replies
