"""Issue 19, case 10: reloads and a drain under an open-loop load (h2load at a fixed rate: the
rate does not slow down when the sidecar does, so a stall shows as failures, not as a slower
run).

A client pod (init + sidecar, two workers) calls an HTTP service on a VIP; its endpoints move
between three backends as the mesh file is replaced.
"""

from __future__ import annotations

import json
import subprocess
import time

import yaml
from support.http_mesh import VIP, http_service
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import Lines, MeshLab, Pod, stat
from support.prereq import require_root_and_tools

from bench.load import parse_h2load

from .conftest import Figure, soak_seconds

RATE = 200  # requests per second over 4 connections
RELOADS = 20

# In-flight slow requests (delay=1 s at the backend), each on its own connection; prints
# "sent" once all are on their way, then one status per request.
SLOW_CALLS = """
import http.client, sys, threading
statuses = []
def call():
    conn = http.client.HTTPConnection(sys.argv[1], 8080, timeout=10)
    try:
        conn.request("GET", "/?delay=1", headers={"Host": "backend"})
        statuses.append(str(conn.getresponse().status))
    except OSError as err:
        statuses.append(type(err).__name__)
threads = [threading.Thread(target=call) for _ in range(int(sys.argv[2]))]
for t in threads: t.start()
print("sent", flush=True)
for t in threads: t.join()
print(" ".join(sorted(statuses)), flush=True)
"""


def requests_seen(backend: Pod) -> int:
    """How many requests the backend (http_peers.py) has begun answering."""
    return json.loads(backend.curl("http://127.0.0.1:8080/__counts"))["requests"]


def config_for(backends: list[Pod], bad: bool = False) -> str:
    config = http_service(backends)
    if bad:  # a field the loader refuses: the whole file is refused
        config["services"][0]["traffic_policy"]["connect_timeout"] = "soon"
    return yaml.safe_dump(config)


def test_10_twenty_reloads_and_a_bad_file_under_open_loop_load_fail_no_request(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: every request of the fixed-rate load succeeds while the mesh file is replaced 20
    times (endpoints moving between backends) and once by a file the loader refuses, which
    changes nothing (counted in config_reload_rejected)."""
    require_root_and_tools("h2load")
    client = mesh_lab.add_pod("client", 10)
    backends = [mesh_lab.add_pod(f"web{n}", 11 + n) for n in range(3)]
    for pod in backends:
        pod.serve_http11(8080, pod.name)
    mesh_lab.intercept(client)
    path = mesh_lab.write_config("mesh.yaml", config_for(backends[:2]))
    mesh_lab.start_sidecar(client, path, "--concurrency", "2")
    seconds = 15 if not soak_seconds() else max(15, soak_seconds())
    requests = int(RATE * seconds)
    load = client.spawn(
        "h2load", "--h1", "-c", "4", "-t", "1", "-m", "1", "--rps", str(RATE / 4),
        "-n", str(requests), f"http://{VIP}:8080/",
    )  # fmt: skip
    interval = seconds * 0.3 / RELOADS  # + each reload's own wait (the file is polled at 0.25 s)
    for n in range(1, RELOADS + 1):
        if n == RELOADS // 2:
            mesh_lab.write_config("mesh.yaml", config_for(backends, bad=True))
            wait_until(lambda: stat(client, "config_reload_rejected") == 1, 10, "the refusal")
        applied = stat(client, "config_reload_total")
        mesh_lab.write_config("mesh.yaml", config_for([backends[n % 3], backends[(n + 1) % 3]]))
        wait_until(
            lambda applied=applied: stat(client, "config_reload_total") > applied,
            10,
            f"reload {n}",
        )
        time.sleep(interval)  # pacing: the reloads spread over the load, not a wait
    assert load.poll() is None, "the reloads outlasted the load"
    try:
        stdout, stderr = load.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        load.kill()
        raise
    result = parse_h2load(stdout)
    assert (result["succeeded"], result["ok_2xx"], result["errors"]) == (
        requests,
        requests,
        0,
    ), stdout + stderr
    figure("requests during reloads", requests, f"at {RATE}/s", "all 2xx")
    figure("reloads applied / refused", RELOADS, "/ 1", "0 failed requests")


def test_10_sigterm_fails_readiness_at_once_and_lets_in_flight_requests_finish(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: SIGTERM while 20 requests are in flight (each held 1 s by the backend): the
    readiness probe answers 503 at once, every one of the 20 gets its 200, none is reset, and
    the sidecar exits 0 within the drain timeout."""
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("web", 11)
    backend.serve_http11(8080, "web")
    mesh_lab.intercept(client)
    path = mesh_lab.write_config("mesh.yaml", config_for([backend]))
    mesh_lab.start_sidecar(client, path, "--concurrency", "2")
    calls = Lines(client.spawn(SYSTEM_PYTHON, "-c", SLOW_CALLS, VIP, "20"))
    wait_until(lambda: "sent" in calls.snapshot(), 10, "the slow calls to be sent")
    wait_until(lambda: requests_seen(backend) == 20, 10, "20 requests held by the backend")
    signalled = time.monotonic()
    client.sidecar.terminate()
    wait_until(lambda: client.ready_code(timeout=0.5) == 503, 1, "readiness to fail")
    not_ready_after = time.monotonic() - signalled
    statuses = calls.finish(20)[-1].split()
    assert statuses == ["200"] * 20, statuses
    assert client.sidecar.wait(10) == 0
    figure("in-flight requests completed", statuses.count("200"), "of 20", "all 200, 0 reset")
    figure("readiness 503 after SIGTERM", round(not_ready_after * 1000), "ms", "at once (< 1 s)")
