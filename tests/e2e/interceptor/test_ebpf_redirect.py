"""detour-ebpf end to end: cgroup/connect4 + sockops + cgroup/getsockopt, no iptables at all.

A namespace "pod" with lo up and a veth default route to a "far" namespace that really owns
192.0.2.10 and serves :8080 (answering "direct"). In the pod, a listener on :15001 runs as
uid 1337 inside the attached cgroup and answers with the SO_ORIGINAL_DST it read.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.lab import PEERS, REPO, SYSTEM_PYTHON, Netns, veth
from support.mesh_lab import cgroup2_root
from support.prereq import require

DETOUR_EBPF = str(REPO / ".venv" / "bin" / "detour-ebpf")
APP_UID = 1000
PROXY_UID = 1337
TARGET = "http://192.0.2.10:8080/"


def _bcc_ready() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return Path(f"/lib/modules/{os.uname().release}/build/include").is_dir()


def _in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    # Join the cgroup before "ip netns exec", which mounts a fresh /sys without the cgroup tree.
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]


def _ebpf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DETOUR_EBPF, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def pod():
    require(os.geteuid() == 0, "root (BPF, namespaces, cgroups)")
    require(_bcc_ready(), "bcc (python3-bpfcc) and kernel headers (make setup)")
    require(Path(DETOUR_EBPF).exists(), f"{DETOUR_EBPF} (run make setup)")
    pod_ns, far_ns = Netns.create("ebpf"), Netns.create("far")
    cgroup = cgroup2_root() / f"detour-ebpf-test-{os.getpid()}"
    cgroup.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        veth(pod_ns, ["10.77.0.1/24"], far_ns, ["10.77.0.2/24"])
        pod_ns.run("ip", "route", "add", "default", "via", "10.77.0.2")
        far_ns.run("ip", "addr", "add", "192.0.2.10/32", "dev", "lo")
        far_ns.run("ip", "route", "add", "default", "via", "10.77.0.1")
        far_ns.peer("http", "8080", "direct")
        listener = subprocess.Popen(
            _in_cgroup(
                cgroup,
                pod_ns.command(
                    SYSTEM_PYTHON, str(PEERS), "http", "15001", "sidecar", uid=PROXY_UID
                ),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(listener)
        line = listener.stdout.readline()
        assert line.strip() == "ready", listener.stderr.read()
        yield pod_ns, cgroup
    finally:
        _ebpf("detach", "--cgroup", str(cgroup))  # no-op (exit 1) when already detached
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        pod_ns.delete()
        far_ns.delete()
        cgroup.rmdir()


def _curl(pod_ns: Netns, cgroup: Path, uid: int) -> str:
    argv = pod_ns.command("curl", "-sS", "--max-time", "5", TARGET, uid=uid)
    done = subprocess.run(_in_cgroup(cgroup, argv), capture_output=True, text=True, timeout=15)
    return (done.stdout + done.stderr).strip()


def test_connect4_redirects_and_getsockopt_reports_the_original(pod):
    pod_ns, cgroup = pod
    # Before attaching, the app reaches the real server.
    assert _curl(pod_ns, cgroup, APP_UID) == "direct original=none"

    attached = _ebpf("attach", "--cgroup", str(cgroup))
    assert attached.returncode == 0, attached.stderr
    # The CLI has exited: the attachment and pins outlive it.
    status = _ebpf("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{cgroup} ok" in status.stdout

    # An app in the cgroup is redirected to the listener, which learns where it was going.
    assert _curl(pod_ns, cgroup, APP_UID) == "sidecar original=192.0.2.10:8080"
    # The proxy's own uid is never redirected (loop prevention).
    assert _curl(pod_ns, cgroup, PROXY_UID) == "direct original=none"
    # Loopback destinations are left alone: the listener answers, but nothing was recorded.
    loop = subprocess.run(
        _in_cgroup(
            cgroup,
            pod_ns.command(
                "curl", "-sS", "--max-time", "5", "http://127.0.0.1:15001/", uid=APP_UID
            ),
        ),
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert loop.stdout.strip() == "sidecar original=none"

    detached = _ebpf("detach", "--cgroup", str(cgroup))
    assert detached.returncode == 0, detached.stderr
    assert _curl(pod_ns, cgroup, APP_UID) == "direct original=none"
    assert str(cgroup) not in _ebpf("status").stdout
