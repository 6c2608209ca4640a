"""Shared by the HTTP router's end-to-end tests: one service "backend" on a VIP with an HTTP
port, and curl helpers that read the backend's JSON answer (tests/support/http_peers.py)."""

from __future__ import annotations

import json

from support.mesh_lab import Pod

VIP = "10.96.0.10"
URL = f"http://{VIP}:8080"


def http_service(backends: list[Pod], protocol: str = "http", **extra) -> dict:
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": VIP,
                "ports": [{"name": "http", "port": 8080, "protocol": protocol}],
                "endpoints": [
                    {"address": pod.ip, "labels": {"version": pod.name}} for pod in backends
                ],
                "traffic_policy": {"connect_timeout": "1s"},
                **extra,
            }
        ],
    }


def curl_json(client: Pod, path: str, *extra: str) -> dict:
    reply = client.curl(URL + path, *extra)
    assert not reply.startswith("ERROR"), reply
    return json.loads(reply)


def curl_status(client: Pod, path: str, *extra: str) -> str:
    return client.curl(URL + path, "-o", "/dev/null", "-w", "%{http_code}", *extra)


# An HTTP/1.1 client that sends GET PATH to VIP:8080, waits for a line on stdin (the test says
# when the upstream holds the request), then resets the connection as a client that gives up.
ASK_THEN_RESET = """
import socket, struct, sys
s = socket.create_connection((sys.argv[1], 8080))
s.sendall(b"GET %s HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n" % sys.argv[2].encode())
sys.stdin.readline()
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("reset", flush=True)
"""


def access_entries(client: Pod) -> list[dict]:
    """The sidecar's JSON access log entries so far (started with ``--access-log json``)."""
    lines = client.read_sidecar_log().splitlines()
    return [json.loads(line.split(": ", 2)[2]) for line in lines if "detour.access" in line]
