"""Issue 19, case 8: clients that vanish mid-request or mid-response leave nothing behind in
the sidecar: no session, no upstream connection, no descriptor.

A client pod (init + sidecar) calls an HTTP service (Python's http.server) on a VIP. Three
kinds of client give up by resetting (SO_LINGER 0): halfway through uploading a body, while
waiting for a slow answer, and after reading part of a 4 MiB answer.
"""

from __future__ import annotations

import os

import yaml
from support.http_mesh import VIP, http_service
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

from .conftest import Figure, soak_seconds

# One client of each kind, N times over, as uid 1000 in the client pod.
VANISHING_CLIENTS = """
import socket, struct, sys, time
vip, rounds = sys.argv[1], int(sys.argv[2])
def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
for _ in range(rounds):
    s = socket.create_connection((vip, 8080))   # mid-request: half a body, then gone
    s.sendall(b"POST /upload HTTP/1.1\\r\\nHost: backend\\r\\nContent-Length: 100000\\r\\n\\r\\n")
    s.sendall(b"x" * 50000)
    time.sleep(0.05)
    reset(s)
    s = socket.create_connection((vip, 8080))   # waiting for a slow answer, then gone
    s.sendall(b"GET /?delay=2 HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n")
    time.sleep(0.2)
    reset(s)
    s = socket.create_connection((vip, 8080))   # mid-response: 64 KiB of 4 MiB, then gone
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(b"GET /?pad=4194304 HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n")
    got = 0
    while got < 65536:
        got += len(s.recv(16384))
    reset(s)
print("done", flush=True)
"""


def bring_up(lab: MeshLab) -> tuple[Pod, Pod]:
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("backend", 11)
    backend.serve_http11(8080, "backend")
    lab.intercept(client)
    config = lab.write_config("mesh.yaml", yaml.safe_dump(http_service([backend])))
    lab.start_sidecar(client, config)
    return client, backend


def established_to(pod: Pod, port: int) -> int:
    """TCP connections established to ``port`` in ``pod`` (the server's side of them)."""
    done = pod.run("ss", "-Htn", "state", "established", f"( sport = :{port} )", uid=None)
    return len([line for line in done.stdout.splitlines() if line.strip()])


def test_8_clients_that_vanish_mid_exchange_leave_no_session_connection_or_descriptor(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: after 3 x N vanished clients, the sidecar has no open downstream connection, no
    upstream connection beyond those it held before, the backend holds no connection from
    it, its descriptors are back to the baseline, and it still serves a request."""
    client, backend = bring_up(mesh_lab)
    pid = client.sidecar_pid()
    assert '"label": "backend"' in client.curl(f"http://{VIP}:8080/")
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 10, "the warm-up to close")
    baseline = len(os.listdir(f"/proc/{pid}/fd"))
    upstream_before = stat(client, "upstream_cx_active")
    rounds = 20 if not soak_seconds() else max(20, int(soak_seconds()))
    done = client.run(
        SYSTEM_PYTHON, "-c", VANISHING_CLIENTS, VIP, str(rounds), timeout=60 + rounds * 2
    )
    assert done.stdout.strip() == "done", done.stderr
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 15, "no downstream left")
    # A reset try closes its upstream connection; the slow answers finish within 2 s.
    wait_until(
        lambda: stat(client, "upstream_cx_active") <= upstream_before, 15, "no upstream left"
    )
    wait_until(lambda: established_to(backend, 8080) <= upstream_before, 15, "backend side")
    wait_until(
        lambda: len(os.listdir(f"/proc/{pid}/fd")) <= baseline, 15, "descriptors at baseline"
    )
    assert '"label": "backend"' in client.curl(f"http://{VIP}:8080/")
    figure("vanished clients", 3 * rounds, "", "nothing left behind")
    figure("descriptors after", len(os.listdir(f"/proc/{pid}/fd")) - baseline, "over", "<= 0")
