"""init's outbound options, read by the programs from maps: excluded ports and CIDRs bypass the
proxy, the proxy's uids/gids are never captured, and attaching again updates the configuration
in place (no second set of programs). One pod walks through the configurations, as an operator
would, re-attaching each time."""

from __future__ import annotations

import subprocess

import pytest
from support.ebpf import ebpf, require_bpftool

from .conftest import FAR4, FAR6, make_pod, remove_cgroup


def _cgroup_programs(cgroup) -> list[str]:
    """What bpftool sees attached to the cgroup: one 'attach_type name' line per program."""
    done = subprocess.run(
        [require_bpftool(), "cgroup", "show", str(cgroup)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [" ".join(line.split()[1:3]) for line in done.stdout.splitlines()[1:] if line.strip()]


def _reattach(pod, *options: str) -> None:
    again = ebpf("attach", "--cgroup", str(pod.cgroup), *options)
    assert again.returncode == 0, again.stderr
    assert "configuration updated" in again.stdout


def test_each_attach_updates_what_is_captured_in_place(pod):
    pod.attach()
    programs = _cgroup_programs(pod.cgroup)
    assert len(programs) == 10  # all but sk_msg, which is attached to the sockhash
    assert pod.curl(f"http://{FAR4}:9090/") == f"sidecar original={FAR4}:9090"

    # Excluded ports and CIDRs bypass the proxy.
    _reattach(pod, "--exclude-ports", "9090", "--exclude-outbound-cidrs", f"{FAR6}/128")
    assert _cgroup_programs(pod.cgroup) == programs, "no second set of programs"
    assert pod.curl(f"http://{FAR4}:8080/") == f"sidecar original={FAR4}:8080"
    assert pod.curl(f"http://{FAR4}:9090/") == "direct9090 original=none"
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6") == "direct original=none"

    # Only the selected ports and CIDRs are captured (and the exclusions above are gone).
    _reattach(pod, "--outbound-ports", "9090", "--outbound-cidrs", "192.0.2.0/24")
    assert pod.curl(f"http://{FAR4}:8080/") == "direct original=none"
    assert pod.curl(f"http://{FAR4}:9090/") == f"sidecar original={FAR4}:9090"
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6") == "direct original=none"

    # Every listed proxy uid is left alone.
    _reattach(pod, "--proxy-uid", "1337,1000")
    assert pod.curl(f"http://{FAR4}:8080/", uid=1000) == "direct original=none"
    assert pod.curl(f"http://{FAR4}:8080/", uid=2000) == f"sidecar original={FAR4}:8080"

    # Back to the defaults: everything captured again, still one set of programs.
    _reattach(pod)
    assert pod.curl(f"http://{FAR4}:9090/") == f"sidecar original={FAR4}:9090"
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6") == f"sidecar original={FAR6}:8080"
    assert _cgroup_programs(pod.cgroup) == programs


def test_bad_options_are_refused_with_init_s_wording_before_anything_is_loaded(pod):
    done = ebpf("attach", "--cgroup", str(pod.cgroup), "--exclude-outbound-cidrs", "10.0.0.0/40")
    assert done.returncode == 2
    assert "--exclude-outbound-cidrs='10.0.0.0/40': '10.0.0.0/40' is not an IPv4 or IPv6 CIDR" in (
        done.stderr
    )
    assert ebpf("status", "--cgroup", str(pod.cgroup)).stdout == "no attachments\n"


@pytest.fixture
def second_pod(far):
    made = make_pod(far, "other", 1)
    try:
        made.spawn_listener("http", "15001", "sidecar2")
        yield made
    finally:
        made.ns.delete()
        remove_cgroup(made.cgroup)


def test_a_second_pods_cgroup_is_unaffected(pod, second_pod):
    pod.attach()
    assert pod.curl(f"http://{FAR4}:8080/") == f"sidecar original={FAR4}:8080"
    assert second_pod.curl(f"http://{FAR4}:8080/") == "direct original=none"
    assert _cgroup_programs(second_pod.cgroup) == []

    second_pod.attach()
    ebpf("detach", "--cgroup", str(pod.cgroup), check=True)
    assert second_pod.curl(f"http://{FAR4}:8080/") == f"sidecar2 original={FAR4}:8080"
    assert pod.curl(f"http://{FAR4}:8080/") == "direct original=none"
