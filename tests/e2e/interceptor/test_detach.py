"""detach leaves nothing behind: no program attached to the cgroup, no pin, and — once the
kernel has dropped its last references — no program or map with the ids attach created
(bpftool looks them up by id, so other users' BPF objects on the machine do not matter)."""

from __future__ import annotations

import json
import subprocess

from support.ebpf import ebpf, pins_of, require_bpftool
from support.lab import wait_until


def _bpftool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_bpftool(), "--json", *args], capture_output=True, text=True, timeout=30
    )


def _ids(pins) -> tuple[set[int], set[int]]:
    """(program ids, map ids) of everything pinned for one attachment."""
    progs, maps = set(), set()
    for pin in pins.iterdir():
        kind = "prog" if pin.name.startswith("prog_") else "map"
        shown = _bpftool(kind, "show", "pinned", str(pin))
        assert shown.returncode == 0, shown.stderr
        (progs if kind == "prog" else maps).add(json.loads(shown.stdout)["id"])
    return progs, maps


def _cgroup_programs(cgroup) -> list[dict]:
    shown = _bpftool("cgroup", "show", str(cgroup))
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout.strip() or "[]")  # nothing attached: an empty line


def _exists(kind: str, ident: int) -> bool:
    return _bpftool(kind, "show", "id", str(ident)).returncode == 0


def test_detach_removes_every_program_map_and_pin(pod):
    pod.attach("--capture-dns")
    pins = pins_of(pod.cgroup)
    progs, maps = _ids(pins)
    assert len(progs) == 11 and len(maps) == 10
    attached = _cgroup_programs(pod.cgroup)
    assert {entry["id"] for entry in attached} <= progs and len(attached) == 10
    # Traffic through it, so the maps hold sockets and records when detach runs.
    assert pod.curl("http://192.0.2.10:8080/").startswith("sidecar ")

    ebpf("detach", "--cgroup", str(pod.cgroup), check=True)
    assert not pins.exists()
    assert _cgroup_programs(pod.cgroup) == []
    wait_until(
        lambda: (
            not any(_exists("prog", i) for i in progs) and not any(_exists("map", i) for i in maps)
        ),
        10,
        "the kernel to free the programs and maps",
    )
    assert pod.curl("http://192.0.2.10:8080/") == "direct original=none"
    # Detaching again says there is nothing to detach.
    again = ebpf("detach", "--cgroup", str(pod.cgroup))
    assert again.returncode == 1 and "nothing attached" in again.stderr
