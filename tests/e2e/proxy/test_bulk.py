"""Bytes through the sidecar's relay: a large transfer both ways, and half-closes.

The client pod has init and a sidecar; its apps run as uid 1000 with Debian's python and talk
plain TCP to a service VIP (or, for passthrough, straight to another pod's address).
"""

from __future__ import annotations

import pytest
import yaml
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

# Outbound interception: every test here runs under iptables and eBPF (conftest.py).
OUTBOUND = True

ECHO_VIP = "10.96.0.20"
COUNT_VIP = "10.96.0.30"
BULK = 256 * 1024 * 1024

# Streams argv[3] bytes of seeded pseudo-random data to argv[1]:argv[2] from a thread while
# the main thread reads the echo; prints "SENT RECEIVED SHA_SENT SHA_RECEIVED SECONDS".
BULK_CLIENT = """
import hashlib, random, socket, sys, threading, time
total, block = int(sys.argv[3]), 1 << 20
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.settimeout(30)
sent_hash, sent = hashlib.sha256(), [0]

def send():
    rng = random.Random(256)
    while sent[0] < total:
        data = rng.randbytes(min(block, total - sent[0]))
        sent_hash.update(data)
        s.sendall(data)
        sent[0] += len(data)
    s.shutdown(socket.SHUT_WR)

started = time.monotonic()
sender = threading.Thread(target=send)
sender.start()
got_hash, got, buf = hashlib.sha256(), 0, bytearray(block)
view = memoryview(buf)
while n := s.recv_into(buf):
    got_hash.update(view[:n])
    got += n
sender.join()
elapsed = time.monotonic() - started
print(sent[0], got, sent_hash.hexdigest(), got_hash.hexdigest(), f"{elapsed:.2f}")
"""

# Sends argv[3] bytes, half-closes (SHUT_WR), then prints everything the server replies.
HALF_CLOSE_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(5)
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
reply = b""
while chunk := s.recv(4096):
    reply += chunk
print(reply.decode().strip())
"""


def tcp_service(name: str, vip: str, port: int, endpoint: str) -> dict:
    return {
        "name": name,
        "vip": vip,
        "ports": [{"name": "tcp", "port": port}],
        "endpoints": [{"address": endpoint}],
    }


def client_with(lab: MeshLab, services: list[dict]) -> Pod:
    client = lab.add_pod("client", 10)
    config = {"workload": {"name": "client", "namespace": "default"}, "services": services}
    lab.intercept(client)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    return client


def test_256_mib_both_ways_arrive_intact_and_are_counted(mesh_lab: MeshLab) -> None:
    server = mesh_lab.add_pod("server", 20)
    server.serve_peer("echo", "7000")
    client = client_with(mesh_lab, [tcp_service("echo", ECHO_VIP, 7000, server.ip)])

    done = client.run(SYSTEM_PYTHON, "-c", BULK_CLIENT, ECHO_VIP, "7000", str(BULK), timeout=60)
    assert done.returncode == 0, done.stderr
    sent, received, sent_sha, received_sha, seconds = done.stdout.split()
    print(f"256 MiB each way through the sidecar in {seconds} s")
    assert int(sent) == int(received) == BULK
    assert sent_sha == received_sha

    wait_until(lambda: stat(client, "istio_tcp_connections_closed_total") == 1, 5, "the close")
    assert stat(client, "istio_tcp_received_bytes_total") == BULK
    assert stat(client, "istio_tcp_sent_bytes_total") == BULK


@pytest.mark.parametrize("route", ["service VIP", "passthrough"])
def test_a_half_close_reaches_the_server_and_its_reply_comes_back(
    mesh_lab: MeshLab, route: str
) -> None:
    server = mesh_lab.add_pod("server", 20)
    server.serve_peer("count", "7100")
    client = client_with(mesh_lab, [tcp_service("counter", COUNT_VIP, 7100, server.ip)])
    target = COUNT_VIP if route == "service VIP" else server.ip
    cluster = "outbound.7100..counter" if route == "service VIP" else "PassthroughCluster"

    for size in (5, 300_000):
        done = client.run(SYSTEM_PYTHON, "-c", HALF_CLOSE_CLIENT, target, "7100", str(size))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(size), "the server saw EOF after every byte"

    assert stat(client, f"upstream_cx_total.cluster={cluster}") == 2, "through the sidecar"
