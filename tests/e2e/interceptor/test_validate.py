"""``detour-ebpf validate``: init's end-to-end probe run inside the pod's cgroup and namespace
(exit 0 when redirected, 126 when not), and the refusals that name the missing piece."""

from __future__ import annotations

import subprocess

import pytest
from support.ebpf import DETOUR_EBPF, ebpf

from .conftest import make_pod, remove_cgroup


@pytest.fixture
def bare_pod(far):
    """A pod with nothing listening on 15001 (validate listens there itself)."""
    made = make_pod(far, "validate", 2)
    try:
        yield made
    finally:
        made.ns.delete()
        remove_cgroup(made.cgroup)


def _validate(pod, *extra: str) -> subprocess.CompletedProcess:
    return ebpf("validate", "--cgroup", str(pod.cgroup), "--netns", pod.ns.name, *extra)


def test_validate_proves_redirection_for_both_families(bare_pod):
    bare_pod.attach()
    done = _validate(bare_pod)
    assert done.returncode == 0, done.stderr
    assert "IPv4: a connection to 192.0.2.1:15999" in done.stdout
    assert "IPv6: a connection to 2001:db8::1:15999" in done.stdout
    assert "SO_ORIGINAL_DST intact" in done.stdout


def test_validate_follows_the_configuration(bare_pod):
    bare_pod.attach("--exclude-outbound-cidrs", "192.0.2.0/24")
    # validate is told the same options: it probes an address that is still captured.
    done = _validate(bare_pod, "--exclude-outbound-cidrs", "192.0.2.0/24")
    assert done.returncode == 0, done.stderr
    assert "198.51.100.1" in done.stdout
    # Told less than attach was, it dials an excluded address, which is not redirected.
    refused = _validate(bare_pod, "--ipv6", "off", "--timeout", "1")
    assert refused.returncode == 126
    assert "192.0.2.1:15999" in refused.stderr


def test_validate_fails_with_126_when_nothing_is_attached(bare_pod):
    done = _validate(bare_pod)
    assert done.returncode == 126
    assert f"nothing is attached to {bare_pod.cgroup}: run detour-ebpf attach" in done.stderr


def test_validate_fails_with_126_when_a_program_was_detached_behind_its_back(bare_pod):
    from support.ebpf import require_bpftool

    bare_pod.attach()
    bpftool = require_bpftool()
    shown = subprocess.run(
        [bpftool, "cgroup", "show", str(bare_pod.cgroup)], capture_output=True, text=True
    ).stdout
    prog_id = next(line.split()[0] for line in shown.splitlines() if "detour_connect4" in line)
    subprocess.run(
        [bpftool, "cgroup", "detach", str(bare_pod.cgroup), "cgroup_inet4_connect", "id", prog_id],
        check=True,
    )
    done = _validate(bare_pod)
    assert done.returncode == 126
    assert "not attached: connect4" in done.stderr


def test_refusals_name_the_missing_piece_and_the_fix(bare_pod):
    missing = ebpf("attach", "--cgroup", f"{bare_pod.cgroup}-missing")
    assert missing.returncode == 1
    assert f"cgroup not found: {bare_pod.cgroup}-missing (create it with mkdir first)" in (
        missing.stderr
    )
    # As an ordinary user (no CAP_BPF, CAP_NET_ADMIN or CAP_SYS_ADMIN).
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
    unprivileged = subprocess.run(
        [*as_user, DETOUR_EBPF, "attach", "--cgroup", str(bare_pod.cgroup)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unprivileged.returncode == 1
    assert "missing privilege: CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)" in (
        unprivileged.stderr
    )
