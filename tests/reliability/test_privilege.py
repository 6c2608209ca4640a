"""Issue 19, case 16: in REDIRECT mode the sidecar serves as uid 1337 with no capability at
all, so a compromised proxy gains nothing of the pod's network administration — whether it
was started as 1337 (as Istio's sidecar container is) or as root with ``--run-as 1337``
(it binds, then drops everything). That init never captures the proxy's own uid is tested
in tests/e2e/init: every rule set it renders starts with the owner exclusions, and
``validate`` probes them."""

from __future__ import annotations

from pathlib import Path

import yaml
from support.echo_lab import ECHO_PORT, VIP, bring_up, echo_mesh, run_client
from support.lab import wait_until
from support.mesh_lab import DETOUR_PROXY, PROXY_UID, MeshLab, Pod

from .conftest import Figure

CAPABILITY_SETS = ("CapPrm", "CapEff", "CapInh", "CapAmb")


def sidecar_processes(pod: Pod) -> list[int]:
    supervisor = pod.sidecar.pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [supervisor, *map(int, children)]


def assert_unprivileged(pid: int) -> None:
    """Real, effective, saved and filesystem ids 1337, no supplementary group, no capability
    in any set a process can use or pass on."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert fields["Uid"].split() == [str(PROXY_UID)] * 4, (pid, fields["Uid"])
    assert fields["Gid"].split() == [str(PROXY_UID)] * 4, (pid, fields["Gid"])
    assert fields["Groups"].strip() == "", (pid, fields["Groups"])
    for name in CAPABILITY_SETS:
        assert int(fields[name], 16) == 0, (pid, name, fields[name])


def assert_relaying_unprivileged(pod: Pod) -> int:
    """The pod's sidecar (supervisor and two workers) relays, and every one of its processes
    is unprivileged; returns how many were checked."""
    assert run_client(pod, "burst", VIP, ECHO_PORT, 10, 2)["ok"] == 10
    processes = sidecar_processes(pod)
    assert len(processes) == 3
    for pid in processes:
        assert_unprivileged(pid)
    return len(processes)


def test_16_started_as_1337_every_sidecar_process_has_no_capability(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: supervisor and both workers are uid/gid 1337 with empty capability sets while
    they relay."""
    client, _server = bring_up(mesh_lab, sidecar_args=("--concurrency", "2"))
    checked = assert_relaying_unprivileged(client)
    figure("processes checked (started as 1337)", checked, "", "no capabilities")


def test_16_started_as_root_with_run_as_it_drops_every_privilege(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: started by root with --run-as 1337, supervisor and both workers end up exactly
    as unprivileged as above, and relay."""
    client = mesh_lab.add_pod("client", 10)
    server = mesh_lab.add_pod("server", 20)
    server.serve_peer("echo", str(ECHO_PORT))
    mesh_lab.intercept(client)
    config = mesh_lab.write_config("mesh.yaml", yaml.safe_dump(echo_mesh(server.ip)))
    client.sidecar = client.spawn(
        DETOUR_PROXY, "--concurrency", "2", "--run-as", str(PROXY_UID), "--config", str(config),
        uid=None,
    )  # fmt: skip
    wait_until(lambda: client.ready_code() == 200, 15, "readiness")
    checked = assert_relaying_unprivileged(client)
    figure("processes checked (root, --run-as)", checked, "", "no capabilities")
