"""DNS capture by cgroup/sendmsg+recvmsg (and connect for TCP) with no iptables rule at all in the
pod: unmodified dig and getaddrinfo get the sidecar's answers for mesh names, the replies look
like they came from the pod's nameserver, and the sidecar's own upstream queries (uid 1337)
reach the real nameserver instead of looping back to it."""

from __future__ import annotations

import shutil

import pytest
import yaml
from support.ebpf import counters, ebpf
from support.mesh_lab import CLUSTER_DNS_ANSWER, MeshLab, Pod
from support.prereq import require

VIP = "10.96.0.10"


@pytest.fixture(scope="module")
def client():
    require(shutil.which("dig") is not None, "dig (Debian's dnsutils)")
    lab = MeshLab.create("ebpf")
    try:
        lab.start_cluster_dns()
        backend = lab.add_pod("backend1", 11)
        backend.serve_http(8080, "backend1")
        pod = lab.add_pod("client", 10)
        ebpf("attach", "--cgroup", str(pod.cgroup), "--capture-dns", check=True)
        pod.ebpf_attached = True  # detached by lab.destroy
        mesh = {
            "workload": {"name": "client", "namespace": "default"},
            "services": [
                {
                    "name": "backend",
                    "vip": VIP,
                    "ports": [{"port": 8080}],
                    "endpoints": [{"address": backend.ip}],
                }
            ],
        }
        lab.start_sidecar(pod, lab.write_config("mesh.yaml", yaml.safe_dump(mesh)))
        yield pod
    finally:
        lab.destroy()


def _dig(pod: Pod, *args: str) -> str:
    return pod.run("dig", "+time=2", "+tries=1", *args).stdout


def test_dig_and_getaddrinfo_resolve_mesh_names_without_iptables(client: Pod) -> None:
    for tool in ("iptables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        assert "-A " not in client.ns.run(tool).stdout, f"{tool} shows a rule"
    udp = _dig(client, "backend.default.svc.cluster.local")
    assert f"\t{VIP}" in udp
    # dig checks the reply's source: it names the pod's nameserver, not 127.0.0.1:15053.
    assert "SERVER: 10.88.0.1#53(10.88.0.1)" in udp
    assert f"\t{VIP}" in _dig(client, "+tcp", "backend.default.svc.cluster.local")
    assert client.curl("http://backend:8080/").startswith("backend1 ")  # getaddrinfo + connect
    seen = counters(client.cgroup)
    assert seen["dns_redirected"] >= 3 and seen["dns_replies_rewritten"] >= 2


def test_a_query_to_a_local_resolver_is_captured_too(client: Pod) -> None:
    # Nothing listens on 127.0.0.53:53 in the pod (as with systemd-resolved's stub address);
    # like init's rules, the capture takes DNS to any server.
    answer = _dig(client, "@127.0.0.53", "backend.default.svc.cluster.local")
    assert f"\t{VIP}" in answer
    assert "SERVER: 127.0.0.53#53(127.0.0.53)" in answer


def test_the_sidecars_own_upstream_queries_are_not_captured(client: Pod) -> None:
    # The sidecar forwards names outside the mesh to 10.88.0.1:53 as uid 1337; captured, they
    # would come back to itself and never resolve.
    assert f"\t{CLUSTER_DNS_ANSWER}" in _dig(client, "www.outside.test")
    assert "NXDOMAIN" in _dig(client, "nothing.default.svc.cluster.local")
