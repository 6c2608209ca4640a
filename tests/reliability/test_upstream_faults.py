"""Issue 19, case 7 (the part the end-to-end suite did not have): an upstream killed in the
middle of a 256 MiB answer never reaches the client as a complete one.

The blackholed endpoint (connect timeout, 503 UF), the hung upstream (504 UT) and the reset
mid-response (UC, retried only when safe) are in tests/e2e/proxy/test_timeouts_and_logs.py
and test_http_traffic.py.

The origin here is a raw HTTP/1.1 server that announces 256 MiB (by Content-Length, or
chunked), sends 32 MiB of it and is killed with SIGKILL. The client is curl through the
sidecar: whatever framing reaches it, the transfer must fail (curl exit 18 or 56), never
end as a success with less data than announced.
"""

from __future__ import annotations

import pytest
import yaml
from support.http_mesh import VIP, access_entries, http_service
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab

from .conftest import Figure

ANNOUNCED = 256 * 1024 * 1024
SENT_BEFORE_DEATH = 32 * 1024 * 1024

DYING_ORIGIN = """
import os, signal, socket, sys
framing, announced, sent_before_death = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = socket.create_server(("0.0.0.0", 8080), reuse_port=False)
print("ready", flush=True)
conn, _ = server.accept()
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += conn.recv(65536)
if framing == "length":
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % announced)
else:
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
block = b"z" * 65536
sent = 0
while sent < sent_before_death:
    conn.sendall(block if framing == "length" else b"10000\\r\\n" + block + b"\\r\\n")
    sent += len(block)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_7_an_origin_killed_mid_transfer_is_an_error_for_the_client_never_a_short_success(
    mesh_lab: MeshLab, figure: Figure, framing: str
) -> None:
    """Pass: curl's transfer fails (exit 18 "partial file" or 56 "recv failure"), it got
    less than announced, and the access log says the upstream connection ended (UC)."""
    client = mesh_lab.add_pod("client", 10)
    origin = mesh_lab.add_pod("origin", 11)
    proc = origin.spawn(
        SYSTEM_PYTHON, "-c", DYING_ORIGIN, framing, str(ANNOUNCED), str(SENT_BEFORE_DEATH)
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    mesh_lab.intercept(client)
    config = mesh_lab.write_config("mesh.yaml", yaml.safe_dump(http_service([origin])))
    mesh_lab.start_sidecar(client, config, "--access-log", "json")
    done = client.run(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
        "--max-time", "60", f"http://{VIP}:8080/big", timeout=90,
    )  # fmt: skip
    status, size = done.stdout.split()
    assert done.returncode in (18, 56), (done.returncode, done.stdout, done.stderr)
    assert status == "200"  # the head had gone out: only the body can tell
    assert SENT_BEFORE_DEATH // 2 <= int(size) < ANNOUNCED, size
    proc.wait(10)
    logged = wait_until(lambda: access_entries(client), 5, "the access log entry")
    assert logged[0]["response_flags"] == "UC", logged
    figure(f"client exit ({framing})", done.returncode, "curl", "18 or 56, never 0")
    figure(f"bytes before the error ({framing})", int(size) // (1024 * 1024), "MiB", "< 256")
