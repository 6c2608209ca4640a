"""A pod for detour-ebpf with no iptables rule at all: a namespace + cgroup whose default routes
(IPv4 and IPv6) lead to a "far" namespace that really owns 192.0.2.10 and 2001:db8::10 and
serves HTTP on 8080 and 9090 (answering "direct"). In the pod, stand-in sidecar listeners on
:15001 (IPv4 and IPv6) run as uid 1337 inside the cgroup and answer with the SO_ORIGINAL_DST
they read, so a test sees redirection the way a user would.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.ebpf import ebpf, require_ebpf
from support.lab import PEERS, SYSTEM_PYTHON, Netns, veth
from support.mesh_lab import cgroup2_root

APP_UID = 1000
PROXY_UID = 1337
FAR4, FAR6 = "192.0.2.10", "2001:db8::10"


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    # Join the cgroup before "ip netns exec", which mounts a fresh /sys without the cgroup tree.
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]


@dataclass
class EbpfPod:
    ns: Netns
    cgroup: Path

    def run(self, *argv: str, uid: int | None = APP_UID, timeout: float = 30):
        return subprocess.run(
            in_cgroup(self.cgroup, self.ns.command(*argv, uid=uid)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def curl(self, url: str, *extra: str, uid: int = APP_UID) -> str:
        done = self.run("curl", "-sS", "-g", "--max-time", "5", *extra, url, uid=uid)
        return (done.stdout + done.stderr).strip()

    def spawn_listener(self, *peer_args: str, uid: int = PROXY_UID) -> subprocess.Popen:
        proc = subprocess.Popen(
            in_cgroup(self.cgroup, self.ns.command(SYSTEM_PYTHON, str(PEERS), *peer_args, uid=uid)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ns._procs.append(proc)  # killed and reaped by Netns.delete
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        return proc

    def attach(self, *options: str) -> None:
        done = ebpf("attach", "--cgroup", str(self.cgroup), *options)
        assert done.returncode == 0, done.stderr


def make_cgroup(role: str) -> Path:
    cgroup = cgroup2_root() / f"detour-ebpf-{role}-{os.getpid()}"
    cgroup.mkdir()
    return cgroup


def remove_cgroup(cgroup: Path) -> None:
    ebpf("detach", "--cgroup", str(cgroup))  # exit 1 when already detached: fine
    (cgroup / "cgroup.kill").write_text("1")
    from support.lab import wait_until

    wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip(), 5, f"{cgroup} empty")
    cgroup.rmdir()


@pytest.fixture
def far():
    require_ebpf()
    ns = Netns.create("far")
    for addr in (f"{FAR4}/32", f"{FAR6}/128"):
        ns.run("ip", "addr", "add", addr, "dev", "lo")
    ns.peer("http", "8080", "direct")
    ns.peer("http", "8080", "direct", "--family", "6")
    ns.peer("http", "9090", "direct9090")
    try:
        yield ns
    finally:
        ns.delete()


def make_pod(far_ns: Netns, role: str, n: int) -> EbpfPod:
    ns = Netns.create(role)
    veth(ns, [f"10.77.{n}.1/24", f"fd77:{n}::1/64"], far_ns, [f"10.77.{n}.2/24", f"fd77:{n}::2/64"])
    ns.run("ip", "route", "add", "default", "via", f"10.77.{n}.2")
    ns.run("ip", "-6", "route", "add", "default", "via", f"fd77:{n}::2")
    return EbpfPod(ns, make_cgroup(role))


@pytest.fixture
def pod(far):
    """A pod with stand-in sidecar listeners (IPv4 and IPv6) and nothing attached yet."""
    made = make_pod(far, "ebpf", 0)
    try:
        made.spawn_listener("http", "15001", "sidecar")
        made.spawn_listener("http", "15001", "sidecar", "--family", "6")
        yield made
    finally:
        made.ns.delete()
        remove_cgroup(made.cgroup)
