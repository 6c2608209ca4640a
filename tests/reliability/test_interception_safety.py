"""Issue 19, cases 1 to 3: the sidecar never loops on its own traffic, refuses connections made
straight to its listeners, and relays nowhere it must not (its own ports, an app bound only to
loopback).

A client pod (init + sidecar) calls an echo service on a VIP; the echo server is a pod of its
own with no sidecar. Apps run as uid 1000.
"""

from __future__ import annotations

import os

import yaml
from support.echo_lab import ECHO_PORT, VIP, bring_up, echo_mesh, run_client
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

from .conftest import Figure, soak_seconds


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_1_a_thousand_connections_cross_the_sidecar_once_and_leave_no_descriptor(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: every connection is echoed; the sidecar accepted exactly as many as the client
    made and dialled exactly as many upstream (its own upstream connections, uid 1337, are
    never captured again: a loop would double both); its descriptors return to the baseline
    and no connection stays open."""
    client, _server = bring_up(mesh_lab)
    pid = client.sidecar_pid()
    run_client(client, "burst", VIP, ECHO_PORT, 1, 1)  # warm: lazily made objects exist
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 10, "the warm-up to close")
    baseline = open_descriptors(pid)
    before_accepted = stat(client, "downstream_cx_total")
    before_dialled = stat(client, "upstream_cx_total")
    count = 1000 if not soak_seconds() else max(1000, int(soak_seconds() * 200))
    result = run_client(client, "burst", VIP, ECHO_PORT, count, 20, timeout=60 + count / 20)
    assert result == {"ok": count, "failed": 0, "errors": []}
    assert stat(client, "downstream_cx_total") - before_accepted == count
    assert stat(client, "upstream_cx_total") - before_dialled == count
    assert stat(client, "downstream_cx_refused") == 0
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 10, "every connection closed")
    wait_until(lambda: open_descriptors(pid) <= baseline, 10, "descriptors back to baseline")
    figure("connections", count, "", "accepted == dialled == made")
    figure("descriptors after", open_descriptors(pid) - baseline, "over baseline", "<= 0")


def test_2_direct_hits_on_the_sidecar_ports_are_closed_at_once_and_dial_nothing(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: a connection made straight to 15001 or 15006, by the pod's app (on loopback or
    the pod's address) or by another pod, gets no byte and is closed within a second; each
    is counted in downstream_cx_refused; nothing is dialled upstream."""
    client, _server = bring_up(mesh_lab)
    outsider = mesh_lab.add_pod("outsider", 30)
    hits = [
        (client, "127.0.0.1", 15001),
        (client, client.ip, 15001),
        (client, "127.0.0.1", 15006),
        (client, client.ip, 15006),
        (outsider, client.ip, 15001),
        (outsider, client.ip, 15006),
    ]
    slowest = 0.0
    for pod, address, port in hits:
        seen = run_client(pod, "poke", address, port)
        assert seen["connected"], (pod.name, address, port, seen)
        assert seen["bytes"] == 0, (pod.name, address, port, seen)
        assert seen["ended"] in ("eof", "reset"), (pod.name, address, port, seen)
        assert seen["after"] < 1.0, (pod.name, address, port, seen)
        slowest = max(slowest, seen["after"])
    wait_until(lambda: stat(client, "downstream_cx_refused") == len(hits), 5, "every hit counted")
    assert stat(client, "upstream_cx_total") == 0
    figure("direct hits refused", len(hits), "", "all closed, counted, 0 dialled")
    figure("slowest close", round(slowest * 1000, 1), "ms", "< 1000 ms")


def test_3_no_service_endpoint_or_destination_reaches_the_sidecars_own_ports(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: a mesh service whose endpoint is the pod itself on the admin port (a mistaken or
    hostile config, from a file or a control plane) is never relayed to it — the client gets
    no admin answer, the admin port sees no request; the same for the stats and readiness
    ports; and an app bound only to 127.0.0.1 cannot be reached from another pod through
    the inbound path."""
    client = mesh_lab.add_pod("client", 10)
    mesh_lab.intercept(client)
    services = []
    for n, target in enumerate((15000, 15020, 15021)):
        service = echo_mesh("127.0.0.1", target)["services"][0]
        service.update(name=f"own{target}", vip=f"10.96.0.{30 + n}")
        services.append(service)
    config = {"workload": {"name": "client", "namespace": "default"}, "services": services}
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    for n, _target in enumerate((15000, 15020, 15021)):
        seen = run_client(client, "poke", f"10.96.0.{30 + n}", ECHO_PORT)
        assert seen["bytes"] == 0, (services[n]["name"], seen)
        assert seen["ended"] in ("eof", "reset"), seen
    assert stat(client, "upstream_cx_total") == 0
    # Each call's connect attempts (two: connect_attempts' default) were refused and counted.
    assert stat(client, "upstream_cx_sidecar_refused") == 6
    # An app on loopback only: the inbound path connects from 127.0.0.6 to the pod's own
    # address, never to 127.0.0.1, so it is out of other pods' reach.
    client.spawn(SYSTEM_PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "9090")
    wait_until(
        lambda: client.curl("http://127.0.0.1:9090/").startswith("<!DOCTYPE"),
        10,
        "the loopback-only app",
    )
    outsider = mesh_lab.add_pod("outsider", 30)
    seen = run_client(outsider, "poke", client.ip, 9090)
    assert seen["bytes"] == 0, seen
    figure("own-port endpoints relayed", 0, "", "0 of 3")
    figure("loopback-only app reached from outside", 0, "", "0")


def test_3_a_sidecar_on_another_admin_port_refuses_relaying_to_that_one(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with ``--admin-port 16000`` the admin answers on 16000, and a mesh service whose
    endpoint is 127.0.0.1:16000 is never relayed to it: the client gets no byte (before, only
    the default ports were known as the sidecar's own)."""
    client = mesh_lab.add_pod("client", 10)
    mesh_lab.intercept(client)
    service = echo_mesh("127.0.0.1", 16000)["services"][0]
    service.update(name="own16000", vip="10.96.0.40")
    config = {"workload": {"name": "client", "namespace": "default"}, "services": [service]}
    config_file = mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config))
    mesh_lab.start_sidecar(client, config_file, "--admin-port", "16000")
    assert client.curl("http://127.0.0.1:16000/ready", uid=None).strip() == "LIVE"
    seen = run_client(client, "poke", "10.96.0.40", ECHO_PORT)
    assert seen["bytes"] == 0, seen
    assert seen["ended"] in ("eof", "reset"), seen
    figure("custom admin port relayed", 0, "", "0")


def _status(pod: Pod, url: str, method: str = "GET") -> str:
    return pod.curl(url, "-o", "/dev/null", "-w", "%{http_code}", "-X", method, uid=1000)


def test_4_admin_is_the_pods_alone_and_the_public_ports_serve_only_their_paths(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: another pod cannot reach the admin port; a GET on any mutating admin endpoint is
    405 and changes nothing (still ready, still relaying); from another pod the metrics port
    serves /stats/prometheus and nothing else (no admin path, no POST), the readiness port
    only its probe."""
    client, _server = bring_up(mesh_lab)
    outsider = mesh_lab.add_pod("outsider", 30)
    assert run_client(outsider, "poke", client.ip, 15000)["bytes"] == 0
    mutating = ("/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/quitquitquit")
    for path in mutating:
        code, _ = client.admin(path)
        assert code == 405, path
    assert client.sidecar.poll() is None
    assert client.ready_code() == 200
    assert run_client(client, "burst", VIP, ECHO_PORT, 5, 1)["ok"] == 5
    metrics = f"http://{client.ip}:15020"
    assert _status(outsider, f"{metrics}/stats/prometheus") == "200"
    refused = 0
    for path in ("/stats", "/config_dump", "/clusters", "/listeners", *mutating):
        for method in ("GET", "POST"):
            code = _status(outsider, metrics + path, method)
            assert code == "404", (path, method, code)
            refused += 1
    assert _status(outsider, f"http://{client.ip}:15021/healthz/ready") == "200"
    assert _status(outsider, f"http://{client.ip}:15021/quitquitquit", "POST") == "404"
    assert client.sidecar.poll() is None and client.ready_code() == 200
    figure("admin paths refused on public ports", refused + 1, "", "all 404; admin unreachable")
