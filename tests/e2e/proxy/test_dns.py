"""Apps call ordinary names: the sidecar's DNS proxy answers mesh names with VIPs.

Each pod's resolv.conf names the lab's cluster DNS (10.88.0.1), which knows only
``outside.test``; it has never heard of the mesh. So a mesh name that resolves proves the
sidecar answered, and an outside name that resolves proves the sidecar forwarded it.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from support.lab import wait_until
from support.mesh_lab import CLUSTER_DNS_ANSWER, MeshLab, Pod, interception_agnostic, stat
from support.prereq import require

# Outbound interception: every test here runs under iptables and eBPF (conftest.py).
OUTBOUND = True

VIP, VIP6 = "10.96.0.10", "fd00:96::10"


def _config(*services: str) -> str:
    return yaml.safe_dump(
        {
            "workload": {"name": "client", "namespace": "default"},
            "services": [
                {
                    "name": name,
                    "vip": [f"10.96.0.{10 + n}", f"fd00:96::{10 + n}"],
                    "ports": [{"port": 8080}],
                    "endpoints": [{"address": "10.88.0.11"}],
                }
                for n, name in enumerate(services)
            ],
        }
    )


@pytest.fixture
def pods(mesh_lab: MeshLab) -> tuple[MeshLab, Pod]:
    mesh_lab.start_cluster_dns()
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("backend1", 11)
    backend.serve_http(8080, "backend1")
    backend.serve_http(8080, "backend1", family=6)
    return mesh_lab, client


def _start(lab: MeshLab, client: Pod, capture: bool = True) -> None:
    lab.intercept(client, *(["--capture-dns"] if capture else []))
    lab.start_sidecar(client, lab.write_config("mesh.yaml", _config("backend")))


def _dig(pod: Pod, *args: str) -> list[str]:
    done = pod.run("dig", "+short", "+time=2", "+tries=1", *args)
    return done.stdout.split()


@pytest.mark.vm
def test_unmodified_clients_resolve_mesh_names_to_the_vip_and_reach_the_service(pods) -> None:
    lab, client = pods
    _start(lab, client)
    assert client.curl("http://backend:8080/").startswith("backend1 ")
    assert client.curl("http://backend.default.svc.cluster.local:8080/").startswith("backend1 ")
    hosts = client.run("getent", "ahosts", "backend.default.svc.cluster.local").stdout
    assert VIP in hosts and VIP6 in hosts
    done = client.run(
        "/usr/bin/python3",
        "-c",
        "import socket\nprint(sorted({a[4][0] for a in socket.getaddrinfo('backend', 8080)}))",
    )
    assert done.stdout.strip() == str(sorted([VIP, VIP6]))
    assert stat(client, "dns_answers_total") >= 3


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dig_gets_the_vip_over_udp_and_tcp(pods, transport: str) -> None:
    require(shutil.which("dig") is not None, "dig (Debian's dnsutils)")
    lab, client = pods
    _start(lab, client)
    flags = ["+tcp"] if transport == "tcp" else []
    assert _dig(client, *flags, "backend.default.svc.cluster.local") == [VIP]
    assert _dig(client, *flags, "AAAA", "backend.default.svc.cluster.local") == [VIP6]
    assert stat(client, "dns_queries_total.transport=" + transport) >= 2


def test_outside_names_are_forwarded_to_the_pods_resolvers(pods) -> None:
    require(shutil.which("dig") is not None, "dig (Debian's dnsutils)")
    lab, client = pods
    _start(lab, client)
    assert _dig(client, "www.outside.test") == [CLUSTER_DNS_ANSWER]
    assert _dig(client, "www.outside.test") == [CLUSTER_DNS_ANSWER]  # from the cache now
    _, stats = client.admin("/stats?filter=^dns_answers_total")
    assert "source=upstream: 1" in stats and "source=cache: 1" in stats
    nx = client.run("dig", "+time=2", "+tries=1", "nothing.default.svc.cluster.local").stdout
    assert "NXDOMAIN" in nx


def test_without_capture_the_mesh_names_do_not_resolve(pods) -> None:
    lab, client = pods
    _start(lab, client, capture=False)
    assert client.curl("http://backend:8080/").startswith("ERROR")
    assert client.run("getent", "hosts", "backend.default.svc.cluster.local").returncode != 0
    assert client.run("getent", "hosts", "www.outside.test").returncode == 0


@interception_agnostic
def test_a_reloaded_service_resolves_within_a_second(pods) -> None:
    require(shutil.which("dig") is not None, "dig (Debian's dnsutils)")
    lab, client = pods
    _start(lab, client)
    assert (
        "NXDOMAIN"
        in client.run("dig", "+time=2", "+tries=1", "fresh.default.svc.cluster.local").stdout
    )
    lab.write_config("mesh.yaml", _config("backend", "fresh"))
    wait_until(
        lambda: _dig(client, "fresh.default.svc.cluster.local") == ["10.96.0.11"],
        1.5,
        "the new service's name to resolve",
    )
    lab.write_config("mesh.yaml", _config("fresh"))
    wait_until(
        lambda: (
            "NXDOMAIN"
            in client.run("dig", "+time=2", "+tries=1", "backend.default.svc.cluster.local").stdout
        ),
        1.5,
        "the removed service's name to stop resolving",
    )
