"""What a workload sees once interception is applied: real curl, dig and listeners in a pod.

Topology: a "pod" namespace (10.77.0.2, fd77::2) joined by a veth to a "world" namespace
(10.77.0.1, fd77::1) that runs the real servers. In the pod, a stand-in for the sidecar
listens on the proxy's ports as uid 1337 and answers with the original destination it
recovered; the world's servers answer with their own name. So every response tells the test
which way the connection went.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest
from support.lab import VENV_BIN, Netns, veth
from support.prereq import require

PROXY_UID = 1337
POD_V4, POD_V6 = "10.77.0.2", "fd77::2"
WORLD_V4, WORLD_V6 = "10.77.0.1", "fd77::1"


@dataclass
class Cluster:
    pod: Netns
    world: Netns

    def curl(self, url: str, uid: int | None = None, source: Netns | None = None) -> str:
        ns = source or self.pod
        done = ns.run("curl", "-sS", "-g", "--max-time", "5", url, uid=uid, check=False)
        return done.stdout.strip() or f"curl failed: {done.stderr.strip()}"

    def sidecar_standin(self, port: int = 15001, label: str = "sidecar") -> None:
        for family in ("4", "6"):
            self.pod.peer("http", str(port), label, "--family", family, uid=PROXY_UID)


@pytest.fixture
def cluster(lab) -> Cluster:
    pod, world = lab("pod"), lab("world")
    veth(pod, [f"{POD_V4}/24", f"{POD_V6}/64"], world, [f"{WORLD_V4}/24", f"{WORLD_V6}/64"])
    pod.run("ip", "route", "add", "default", "via", WORLD_V4)
    pod.run("ip", "-6", "route", "add", "default", "via", WORLD_V6)
    for port in ("8080", "8081"):
        for family in ("4", "6"):
            world.peer("http", port, "world", "--family", family)
    return Cluster(pod, world)


def _apply(ns: Netns, *args: str) -> None:
    done = ns.detour_init("apply", *args)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("backend", ["legacy", "nft"])
@pytest.mark.vm
def test_outbound_tcp_reaches_the_outbound_port_with_its_original_destination(
    cluster: Cluster, backend: str
) -> None:
    _apply(cluster.pod, "--backend", backend)
    cluster.sidecar_standin()
    assert cluster.curl(f"http://{WORLD_V4}:8080/") == f"sidecar original={WORLD_V4}:8080"
    assert cluster.curl(f"http://[{WORLD_V6}]:8080/") == f"sidecar original={WORLD_V6}:8080"
    # An address nobody serves is still answered: the client never left the pod.
    assert cluster.curl("http://192.0.2.44:443/") == "sidecar original=192.0.2.44:443"


def test_the_proxy_uid_is_never_redirected(cluster: Cluster) -> None:
    _apply(cluster.pod)
    cluster.sidecar_standin()
    assert cluster.curl(f"http://{WORLD_V4}:8080/", uid=PROXY_UID) == "world original=none"
    assert cluster.curl(f"http://[{WORLD_V6}]:8080/", uid=PROXY_UID) == "world original=none"
    assert cluster.curl(f"http://{WORLD_V4}:8080/", uid=1000) == f"sidecar original={WORLD_V4}:8080"


def test_excluded_ports_and_cidrs_go_direct(cluster: Cluster) -> None:
    _apply(
        cluster.pod,
        "--exclude-outbound-ports",
        "8081",
        "--exclude-outbound-cidrs",
        f"{WORLD_V6}/128",
    )
    cluster.sidecar_standin()
    assert cluster.curl(f"http://{WORLD_V4}:8081/") == "world original=none"
    assert cluster.curl(f"http://{WORLD_V4}:8080/") == f"sidecar original={WORLD_V4}:8080"
    assert cluster.curl(f"http://[{WORLD_V6}]:8080/") == "world original=none"


def test_only_listed_outbound_ports_and_cidrs_are_captured(cluster: Cluster) -> None:
    _apply(cluster.pod, "--outbound-ports", "8080", "--outbound-cidrs", f"{WORLD_V4}/32")
    cluster.sidecar_standin()
    assert cluster.curl(f"http://{WORLD_V4}:8080/") == f"sidecar original={WORLD_V4}:8080"
    assert cluster.curl(f"http://{WORLD_V4}:8081/") == "world original=none"
    assert cluster.curl(f"http://[{WORLD_V6}]:8080/") == "world original=none"


def test_cleanup_gives_the_pod_its_direct_path_back(cluster: Cluster) -> None:
    _apply(cluster.pod)
    cluster.sidecar_standin()
    assert cluster.curl(f"http://{WORLD_V4}:8080/").startswith("sidecar")
    assert cluster.pod.detour_init("cleanup").returncode == 0
    assert cluster.curl(f"http://{WORLD_V4}:8080/") == "world original=none"


def test_inbound_redirect_sends_other_hosts_to_the_inbound_port(cluster: Cluster) -> None:
    _apply(cluster.pod, "--exclude-inbound-ports", "9090")
    cluster.sidecar_standin(port=15006, label="inbound")
    cluster.pod.peer("http", "9090", "app")
    got = cluster.curl(f"http://{POD_V4}:9080/", source=cluster.world)
    assert got == f"inbound original={POD_V4}:9080"
    got6 = cluster.curl(f"http://[{POD_V6}]:9080/", source=cluster.world)
    assert got6 == f"inbound original={POD_V6}:9080"
    assert cluster.curl(f"http://{POD_V4}:9090/", source=cluster.world) == "app original=none"


@pytest.mark.parametrize("backend", ["legacy", "nft"])
@pytest.mark.vm
def test_inbound_tproxy_keeps_the_original_destination_as_the_socket_address(
    cluster: Cluster, backend: str
) -> None:
    _apply(cluster.pod, "--mode", "TPROXY", "--backend", backend)
    # A TPROXY listener needs IP_TRANSPARENT, i.e. CAP_NET_ADMIN: run it as root here.
    for family in ("4", "6"):
        cluster.pod.peer("http", "15006", "tproxy", "--transparent", "--family", family)
    got = cluster.curl(f"http://{POD_V4}:9080/", source=cluster.world)
    assert got == f"tproxy original={POD_V4}:9080"
    got6 = cluster.curl(f"http://[{POD_V6}]:9080/", source=cluster.world)
    assert got6 == f"tproxy original={POD_V6}:9080"


def _dig(ns: Netns, *args: str) -> str:
    done = ns.run("dig", "+short", "+time=1", "+tries=1", *args, check=False)
    return done.stdout.strip()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_to_any_server_is_answered_by_the_dns_port(cluster: Cluster, transport: str) -> None:
    require(shutil.which("dig") is not None, "dig (Debian's dnsutils)")
    flags = ["+tcp"] if transport == "tcp" else []
    # Nothing serves DNS at the world address: without capture, the query goes unanswered.
    assert "203.0.113.7" not in _dig(cluster.pod, *flags, f"@{WORLD_V4}", "backend.test")
    _apply(cluster.pod, "--capture-dns")
    cluster.pod.peer("dns", "15053", "203.0.113.7", uid=PROXY_UID)
    assert _dig(cluster.pod, *flags, f"@{WORLD_V4}", "backend.test") == "203.0.113.7"
    assert _dig(cluster.pod, *flags, "@192.0.2.53", "other.test") == "203.0.113.7"


def test_validate_exits_0_with_rules_and_126_without(cluster: Cluster) -> None:
    without = cluster.pod.detour_init("validate", "--timeout", "1")
    assert without.returncode == 126
    assert "not being redirected" in without.stderr
    _apply(cluster.pod)
    assert cluster.pod.detour_init("validate").returncode == 0


# The probe's client and validate's wait share one timeout; here the client gives up first.
CLIENT_TIMES_OUT_FIRST = """
import socket
from init.config import parse_config
from init.validate import Probe, ValidationFailed, _await_redirect, _dial_as_app
config = parse_config({}, {})
probe = Probe(4, "192.0.2.1", 15999)
listener = socket.create_server(("0.0.0.0", config.outbound_port))
child = _dial_as_app(config, probe, 0.3)
try:
    _await_redirect(listener, probe, child, 30)
except ValidationFailed as failed:
    print(failed)
"""


def test_a_probe_whose_connect_times_out_was_not_redirected(cluster: Cluster) -> None:
    """Without rules the probe's SYN goes unanswered: whichever timeout fires first, the
    verdict is the same (it once depended on the race, and so did this suite)."""
    done = cluster.pod.run(str(VENV_BIN / "python"), "-c", CLIENT_TIMES_OUT_FIRST, timeout=20)
    assert "traffic is not being redirected" in done.stdout, done.stdout + done.stderr
