"""Churn: 10,000 short connections through the real sidecar in eBPF mode leave the state maps
(read from their pins) bounded and empty again: records are taken when the proxy accepts, and
deleted when a socket closes; sockets leave the sockhash as they close."""

from __future__ import annotations

import pytest
from support.ebpf import counters, entries
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab

CONNECTIONS = 10_000

# argv: address port count. Eight threads, each: connect, send a line, read it back, close.
CHURN_CLIENT = """
import socket, sys, threading
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
failures, done, lock = [], [0], threading.Lock()

def worker(count):
    for _ in range(count):
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"ping\\n")
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(64):
                    reply += chunk
                if reply != b"ping\\n":
                    failures.append(reply)
        except OSError as err:
            failures.append(err)
        with lock:
            done[0] += 1

threads = [threading.Thread(target=worker, args=(total // 8,)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(done[0], len(failures), failures[:3])
"""


@pytest.fixture
def lab():
    made = MeshLab.create("ebpf")
    try:
        yield made
    finally:
        made.destroy()


def test_ten_thousand_short_connections_leave_the_maps_empty(lab: MeshLab) -> None:
    server = lab.add_pod("server", 20)
    server.serve_peer("echo", "7000")
    client = lab.add_pod("client", 10)
    lab.intercept(client)
    lab.start_sidecar(client, None, "--access-log", "off")

    done = client.run(
        SYSTEM_PYTHON, "-c", CHURN_CLIENT, server.ip, "7000", str(CONNECTIONS), timeout=240
    )
    assert done.returncode == 0, done.stderr
    completed, failed, examples = done.stdout.split(maxsplit=2)
    assert (int(completed), int(failed)) == (CONNECTIONS, 0), examples

    seen = counters(client.cgroup)
    assert seen["connect_redirected"] == CONNECTIONS
    assert seen["original_dst_answered"] == CONNECTIONS
    assert seen["record_rejected"] == 0
    # Every record was handed over and every local socket left the sockhash as it closed (the
    # sidecar's last sockets close a moment after the client's).
    wait_until(
        lambda: entries(client.cgroup) == {"handoff_by_client": 0, "local_socks": 0},
        10,
        f"empty state maps (now {entries(client.cgroup)})",
    )
