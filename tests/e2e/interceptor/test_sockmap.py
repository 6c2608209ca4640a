"""sockops + sk_msg: the app <-> sidecar hop (both ends on loopback, both in the pod's cgroup)
goes socket to socket through the local_socks sockhash. 256 MiB each way through the real
sidecar arrive intact (SHA-256 both ways), and the counters show the hop was short-circuited —
or, with --sockmap off, that it was not."""

from __future__ import annotations

import pytest
import yaml
from support.ebpf import counters, ebpf
from support.lab import SYSTEM_PYTHON
from support.mesh_lab import MeshLab

from tests.e2e.proxy.test_bulk import BULK, BULK_CLIENT, ECHO_VIP, tcp_service


@pytest.fixture
def lab():
    made = MeshLab.create("ebpf")
    try:
        yield made
    finally:
        made.destroy()


# Off, the hop is ordinary TCP (proved by the counters); a smaller transfer is enough there.
@pytest.mark.parametrize(("sockmap", "size"), [("on", BULK), ("off", BULK // 8)])
def test_bytes_each_way_through_the_local_hop(lab: MeshLab, sockmap: str, size: int) -> None:
    server = lab.add_pod("server", 20)
    server.serve_peer("echo", "7000")
    client = lab.add_pod("client", 10)
    lab.intercept(client)
    ebpf("attach", "--cgroup", str(client.cgroup), "--sockmap", sockmap, check=True)
    mesh = {
        "workload": {"name": "client", "namespace": "default"},
        "services": [tcp_service("echo", ECHO_VIP, 7000, server.ip)],
    }
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(mesh)))
    before = counters(client.cgroup)

    done = client.run(SYSTEM_PYTHON, "-c", BULK_CLIENT, ECHO_VIP, "7000", str(size), timeout=90)
    assert done.returncode == 0, done.stderr
    sent, received, sent_sha, received_sha, seconds = done.stdout.split()
    print(f"{size >> 20} MiB each way, sockmap {sockmap}: {seconds} s")
    assert int(sent) == int(received) == size
    assert sent_sha == received_sha

    after = counters(client.cgroup)
    redirected = after["sockmap_redirected"] - before["sockmap_redirected"]
    moved = after["sockmap_bytes"] - before["sockmap_bytes"]
    shown = ebpf("status", "--cgroup", str(client.cgroup), check=True).stdout
    assert f"sockmap={sockmap}" in shown
    assert f"sockmap_redirected={after['sockmap_redirected']}" in shown
    if sockmap == "on":
        assert redirected > 0
        assert moved >= 2 * size, "both directions of the app <-> sidecar hop"
    else:
        assert (redirected, moved) == (0, 0)
