"""The sidecar's lifecycle under live traffic: config reloads (good and bad) and the SIGTERM drain.

A client pod (init + sidecar) runs an app as uid 1000 that keeps calling a service's VIP, one
short connection after another, and reports each call. Whatever the sidecar does meanwhile
(apply a new config, refuse a broken one, drain on SIGTERM), the app must not see a failed call.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
import yaml
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import Lines, MeshLab, Pod, stat

VIP = "10.96.0.10"
ECHO_VIP = "10.96.0.20"
DRAIN_TIMEOUT = 5.0  # MeshLab.start_sidecar passes --drain-timeout 5

# Four threads call VIP:8080, one short connection after another, until stdin closes; each call
# prints "ok LABEL" (who answered) or "fail ERROR". The last line is "done".
CALLER = """
import socket, sys, threading
vip = sys.argv[1]
stop, out = threading.Event(), threading.Lock()

def say(line):
    with out:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

def call():
    with socket.create_connection((vip, 8080), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\\r\\n\\r\\n")
    if not head.startswith(b"HTTP/1.0 200") or not body.strip():
        raise ValueError(f"bad reply {reply!r}")
    return body.split()[0].decode()

def loop():
    while not stop.is_set():
        try:
            say("ok " + call())
        except Exception as err:
            say(f"fail {err!r}")

threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
callers = [threading.Thread(target=loop) for _ in range(4)]
for t in callers:
    t.start()
for t in callers:
    t.join()
say("done")
"""

# One long connection to an echo service that streams 64 KiB every 10 ms and checks the echo.
# stdin: "progress" prints how much came back so far; "finish" also ends the stream (SHUT_WR).
# Last line: "SENT RECEIVED SAME_SHA256".
STREAMER = """
import hashlib, socket, sys, threading, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
finish = threading.Event()
state = {"sent": 0, "got": 0}
sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()

def commands():
    for line in sys.stdin:
        print("received", state["got"], flush=True)
        if line.strip() == "finish":
            finish.set()
            return

def send():
    n = 0
    while not finish.is_set():
        block = hashlib.sha256(n.to_bytes(8, "big")).digest() * 2048
        s.sendall(block)
        sent_hash.update(block)
        state["sent"] += len(block)
        n += 1
        time.sleep(0.01)
    s.shutdown(socket.SHUT_WR)

threading.Thread(target=commands, daemon=True).start()
sender = threading.Thread(target=send)
sender.start()
while chunk := s.recv(65536):
    if state["got"] == 0:
        print("streaming", flush=True)
    got_hash.update(chunk)
    state["got"] += len(chunk)
sender.join()
print(state["sent"], state["got"], sent_hash.hexdigest() == got_hash.hexdigest(), flush=True)
"""

# Connects once and says what a client sees: "refused" (RST to the SYN), "answered" (the echo
# came back), or what else happened (e.g. connected, then nothing).
PROBE = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
except ConnectionRefusedError:
    raise SystemExit(print("refused"))
except OSError as err:
    raise SystemExit(print("connect failed", repr(err)))
s.settimeout(2)
try:
    s.sendall(b"ping")
    reply = s.recv(4)
    print("answered" if reply == b"ping" else f"connected, then {reply!r}")
except OSError as err:
    print("connected, then", repr(err))
"""


def mesh_config(backends: list[str], echo: list[str] = ()) -> dict:
    services = [
        {
            "name": "backend",
            "vip": VIP,
            "ports": [{"name": "http", "port": 8080, "protocol": "tcp"}],
            "endpoints": [{"address": address} for address in backends],
            "traffic_policy": {"load_balancer": "round_robin", "connect_timeout": "1s"},
        }
    ]
    if echo:
        services.append(
            {
                "name": "echo",
                "vip": ECHO_VIP,
                "ports": [{"name": "tcp", "port": 7000}],
                "endpoints": [{"address": address} for address in echo],
            }
        )
    return {"workload": {"name": "client", "namespace": "default"}, "services": services}


def start_client(lab: MeshLab, config: dict, workers: int = 1) -> Pod:
    """A client pod with interception and a sidecar (access log off: thousands of calls would
    fill the log pipe nobody reads until teardown)."""
    client = lab.add_pod("client", 10)
    lab.intercept(client)
    path = lab.write_config("mesh.yaml", yaml.safe_dump(config))
    lab.start_sidecar(client, path, "--access-log", "off", "--concurrency", str(workers))
    return client


def http_backends(lab: MeshLab, count: int) -> list[Pod]:
    pods = [lab.add_pod(f"backend{n}", 10 + n) for n in range(1, count + 1)]
    for pod in pods:
        pod.serve_http(8080, pod.name)
    return pods


def answers(caller: Lines) -> list[str]:
    return [line.split()[1] for line in caller.snapshot() if line.startswith("ok ")]


def stop_caller(caller: Lines) -> list[str]:
    caller.proc.stdin.close()
    lines = caller.finish(10)
    assert lines and lines[-1] == "done", lines[-5:]
    return lines


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.vm
def test_reload_adds_an_endpoint_under_traffic_without_a_failed_call(
    mesh_lab: MeshLab, workers: int
) -> None:
    pods = http_backends(mesh_lab, 3)
    client = start_client(mesh_lab, mesh_config([p.ip for p in pods[:2]]), workers)
    caller = Lines(client.spawn_piped(SYSTEM_PYTHON, "-c", CALLER, VIP))
    wait_until(lambda: len(answers(caller)) >= 100, 10, "100 calls before the reload")
    assert set(answers(caller)) == {pods[0].name, pods[1].name}

    mesh_lab.write_config("mesh.yaml", yaml.safe_dump(mesh_config([p.ip for p in pods])))
    wait_until(lambda: pods[2].name in answers(caller), 3, "the new endpoint to answer")
    first_new = answers(caller).index(pods[2].name)
    wait_until(lambda: len(answers(caller)) >= first_new + 150, 10, "150 calls after the reload")
    lines = stop_caller(caller)

    assert [line for line in lines if line.startswith("fail")] == []
    after = Counter(answers(caller)[first_new:])
    assert set(after) == {p.name for p in pods}, after
    if workers == 1:  # one round robin (4 callers print in about the order they were served)
        assert max(after.values()) - min(after.values()) <= 4, f"round robin over 3: {after}"
    assert stat(client, "config_reload_total") == 1
    assert stat(client, "config_reload_rejected") == 0


def test_a_bad_config_is_refused_while_traffic_continues(mesh_lab: MeshLab) -> None:
    pods = http_backends(mesh_lab, 3)
    old = [pods[0].ip, pods[1].ip]
    client = start_client(mesh_lab, mesh_config(old))
    caller = Lines(client.spawn_piped(SYSTEM_PYTHON, "-c", CALLER, VIP))
    wait_until(lambda: len(answers(caller)) >= 30, 10, "30 calls before the bad config")

    bad = mesh_config([p.ip for p in pods])
    bad["services"][0]["ports"][0]["port"] = 70000
    mesh_lab.write_config("mesh.yaml", yaml.safe_dump(bad))
    wait_until(lambda: stat(client, "config_reload_rejected") == 1, 5, "the refusal")
    refused_at = len(answers(caller))
    wait_until(lambda: len(answers(caller)) >= refused_at + 100, 10, "100 calls after refusal")
    assert set(answers(caller)) == {pods[0].name, pods[1].name}, "the old endpoints only"
    assert stat(client, "config_reload_total") == 0

    code, body = client.admin("/config_dump")
    assert code == 200
    services = json.loads(body)["mesh"]["services"]
    assert [s["name"] for s in services] == ["backend"]
    assert [p["port"] for p in services[0]["ports"]] == [8080]
    assert [e["address"] for e in services[0]["endpoints"]] == old

    mesh_lab.write_config("mesh.yaml", yaml.safe_dump(mesh_config([p.ip for p in pods])))
    wait_until(lambda: pods[2].name in answers(caller), 3, "the good config's new endpoint")
    lines = stop_caller(caller)

    assert [line for line in lines if line.startswith("fail")] == []
    assert stat(client, "config_reload_total") == 1
    assert stat(client, "config_reload_rejected") == 1
    code, body = client.admin("/config_dump")
    endpoints = json.loads(body)["mesh"]["services"][0]["endpoints"]
    assert [e["address"] for e in endpoints] == [p.ip for p in pods]


def start_stream(client: Pod) -> tuple[Lines, int]:
    """Start the streamer on the echo VIP; returns it and how many bytes came back so far."""
    streamer = client.spawn_piped(SYSTEM_PYTHON, "-c", STREAMER, ECHO_VIP, "7000")
    out = Lines(streamer)
    wait_until(lambda: "streaming" in out.snapshot(), 5, "the transfer to start")
    return out, tell(out, "progress")


def tell(out: Lines, command: str) -> int:
    """Send the streamer a command; returns the byte count it answers with."""
    seen = len([x for x in out.snapshot() if x.startswith("received")])
    out.proc.stdin.write(command + "\n")
    out.proc.stdin.flush()
    wait_until(
        lambda: len([x for x in out.snapshot() if x.startswith("received")]) > seen,
        5,
        f"the streamer's answer to {command}",
    )
    return int([x for x in out.snapshot() if x.startswith("received")][-1].split()[1])


def sigterm(pod: Pod) -> float:
    """SIGTERM to the detour-proxy process itself (verified in /proc); returns when."""
    os.kill(pod.sidecar_pid(), signal.SIGTERM)
    return time.monotonic()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_an_open_transfer_and_exits_zero(mesh_lab: MeshLab, workers: int) -> None:
    server = mesh_lab.add_pod("server", 20)
    server.serve_peer("echo", "7000")
    client = start_client(mesh_lab, mesh_config([], echo=[server.ip]), workers)
    out, before = start_stream(client)

    signalled = sigterm(client)
    wait_until(lambda: client.ready_code() == 503, 2, "readiness to fail at once")
    flowed = wait_until(
        lambda: max(tell(out, "progress") - before, 0), 3, "bytes to keep flowing while draining"
    )
    assert out.proc.poll() is None and client.sidecar.poll() is None

    finished_at = tell(out, "finish")
    lines = out.finish(10)
    sent, received, same = lines[-1].split()
    assert int(sent) == int(received) >= finished_at >= before + flowed, lines[-3:]
    assert same == "True", "the echo came back byte for byte"
    assert out.proc.returncode == 0, out.proc.stderr.read()

    remaining = DRAIN_TIMEOUT + 1 - (time.monotonic() - signalled)
    assert client.sidecar.wait(max(remaining, 0.1)) == 0, "exit 0 within the drain timeout"


def test_sigterm_stops_accepting_new_connections_at_once(mesh_lab: MeshLab) -> None:
    server = mesh_lab.add_pod("server", 20)
    server.serve_peer("echo", "7000")
    client = start_client(mesh_lab, mesh_config([], echo=[server.ip]))
    probe = (SYSTEM_PYTHON, "-c", PROBE, ECHO_VIP, "7000")
    assert client.run(*probe).stdout.strip() == "answered", "the VIP works before the drain"
    out, _ = start_stream(client)  # keeps the drain going while we probe

    sigterm(client)
    wait_until(lambda: client.ready_code() == 503, 2, "readiness to fail at once")
    try:
        assert client.sidecar.poll() is None, "still draining the open connection"
        seen = client.run(*probe).stdout.strip()
        listening = client.run("ss", "-ltnp", uid=None).stdout  # who still listens, as evidence
        assert seen == "refused", f"new connections must be refused\n{listening}"
    finally:
        tell(out, "finish")
        out.finish(10)
