"""What HTTP traffic through the sidecar's router keeps intact or changes on purpose: request
bodies (fixed, chunked, with Expect: 100-continue), WebSocket upgrades, header rules, fault
injection, and the retry budget under a failing, saturated upstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import yaml
from support.http_mesh import (
    ASK_THEN_RESET,
    URL,
    VIP,
    access_entries,
    curl_json,
    curl_status,
    http_service,
)
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import HTTP_PEERS, Lines, MeshLab, Pod, interception_agnostic, stat

# Outbound interception: the tests that exercise how a connection reaches the sidecar run
# under iptables and eBPF (conftest.py); those about what the router does after that, once.
OUTBOUND = True


def bring_up(lab: MeshLab, **extra) -> tuple[Pod, Pod]:
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("v1", 11)
    backend.serve_http11(8080, "v1")
    config = http_service([backend], **extra)
    lab.intercept(client)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    return client, backend


def test_request_bodies_arrive_intact_fixed_chunked_and_after_100_continue(
    mesh_lab: MeshLab,
) -> None:
    client, _ = bring_up(mesh_lab)
    payload = os.urandom(3 * 1024 * 1024 + 17)  # over the retry buffer: streamed, not kept
    path = mesh_lab.workdir / "upload.bin"
    path.write_bytes(payload)
    path.chmod(0o644)
    mesh_lab.workdir.chmod(0o755)
    digest = hashlib.sha256(payload).hexdigest()
    plain = curl_json(client, "/upload", "--data-binary", f"@{path}")
    assert (plain["method"], plain["body_bytes"], plain["body_sha256"]) == (
        "POST",
        len(payload),
        digest,
    )
    chunked = curl_json(
        client, "/upload", "--data-binary", f"@{path}", "-H", "Transfer-Encoding: chunked"
    )
    assert (chunked["body_bytes"], chunked["body_sha256"]) == (len(payload), digest)
    expecting = client.curl(
        URL + "/upload",
        "--data-binary",
        f"@{path}",
        "-H",
        "Expect: 100-continue",
        "-w",
        "\n%{http_code}",
        "-v",
    )
    body, _, code = expecting.rpartition("\n")
    assert code == "200"
    assert json.loads(body)["body_sha256"] == digest


def test_websocket_upgrade_becomes_a_tunnel_after_the_upstreams_101(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab)
    done = client.run(SYSTEM_PYTHON, str(HTTP_PEERS), "websocket", URL + "/ws", "hello", "mesh")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "HTTP/1.1 101 Switching Protocols accept-ok",
        "HELLO",
        "MESH",
    ]
    assert stat(client, "downstream_rq_1xx") == 1


@interception_agnostic
def test_route_header_rules_change_requests_and_responses(mesh_lab: MeshLab) -> None:
    rules = {
        "request": {"set": {"x-env": "mesh"}, "add": {"x-extra": "1"}, "remove": ["x-secret"]},
        "response": {"set": {"x-served-by": "detour"}, "remove": ["server"]},
    }
    client, _ = bring_up(mesh_lab, http=[{"headers": rules}])
    reply = client.curl(
        URL + "/", "-i", "-H", "x-secret: s3cret", "-H", "x-env: dev", "-H", "x-extra: 0"
    )
    head, _, body = reply.partition("\n\n")  # curl -i; subprocess text mode made CRLF LF
    seen = json.loads(body)["headers"]
    assert ["x-env", "mesh"] in seen and ["x-env", "dev"] not in seen
    assert ["x-extra", "0"] in seen and ["x-extra", "1"] in seen
    assert all(name != "x-secret" for name, _ in seen)
    head = head.lower()
    assert "x-served-by: detour" in head
    assert "\nserver:" not in head


@interception_agnostic
def test_fault_injection_aborts_the_configured_share(mesh_lab: MeshLab) -> None:
    fault = {"abort": {"percentage": 50, "http_status": 418}}
    client, backend = bring_up(mesh_lab, http=[{"fault": fault, "retries": {"attempts": 0}}])
    replies = client.http_client(URL + "/", 400)
    aborted = sum(r["status"] == 418 for r in replies)
    assert 140 <= aborted <= 260, aborted  # 50% of 400, with a wide margin
    assert sum(r["status"] == 200 for r in replies) == 400 - aborted
    served = json.loads(client.curl(f"http://{backend.ip}:8080/__counts"))["requests"]
    assert served == 400 - aborted  # an aborted request never reached the upstream


@interception_agnostic
def test_fault_delay_slows_requests_down(mesh_lab: MeshLab) -> None:
    fault = {"delay": {"percentage": 100, "fixed_delay": "400ms"}}
    client, _ = bring_up(mesh_lab, http=[{"fault": fault}])
    took = client.curl(URL + "/", "-o", "/dev/null", "-w", "%{time_total}")
    assert float(took) >= 0.4


@interception_agnostic
def test_retry_budget_caps_retries_when_every_try_fails(mesh_lab: MeshLab) -> None:
    # Every try fails slowly, 24 clients at once, 5 retries allowed each: without a budget
    # that is 144 tries. The budget lets at most max(3, 20% of 24) requests retry at a time.
    retries = {"attempts": 5, "retry_on": "5xx", "backoff_base": "1ms", "backoff_max": "2ms"}
    client, backend = bring_up(mesh_lab, http=[{"retries": retries}])
    replies = client.http_client(URL + "/?status=503&delay=0.3", 24, "--parallel", "24")
    assert [r["status"] for r in replies] == [503] * 24  # the upstream's own answer, relayed
    tries = json.loads(client.curl(f"http://{backend.ip}:8080/__counts"))["requests"]
    overflow = stat(client, "upstream_rq_retry_overflow")
    assert overflow > 0
    assert tries <= 24 + 4 * 5, tries
    assert stat(client, "upstream_rq_retry.cluster=") == tries - 24


@interception_agnostic
def test_no_route_for_a_bad_request_and_the_connection_is_closed(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab)
    big = "x" * (70 * 1024)
    assert curl_status(client, "/", "-H", f"x-big: {big}") == "431"
    assert curl_status(client, "/", "--http1.0", "-H", "Host:") == "400"  # no Host at all
    assert curl_status(client, "/") == "200"


@interception_agnostic
def test_drain_closes_idle_keep_alive_connections_gracefully(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab)
    hold = (
        "import http.client, sys\n"
        f"c = http.client.HTTPConnection('{URL.split('//')[1].split(':')[0]}', 8080, timeout=20)\n"
        "c.request('GET', '/'); r = c.getresponse(); r.read(); print(r.status, flush=True)\n"
        "print('eof' if c.sock.recv(1) == b'' else 'data', flush=True)\n"
    )
    proc = client.spawn(SYSTEM_PYTHON, "-c", hold)
    assert proc.stdout.readline().strip() == "200"  # one request done, connection kept idle
    started = time.monotonic()
    client.sidecar.terminate()
    assert client.sidecar.wait(10) == 0
    assert time.monotonic() - started < 2.5, "an idle connection must not hold the drain"
    assert proc.stdout.readline().strip() == "eof"  # a FIN, not a reset
    assert "(0 connections cut" in client.read_sidecar_log()


# --- a client that leaves in the middle of a request ------------------------------------------

UPLOAD_THEN_RESET = """
import socket, struct, sys
s = socket.create_connection((sys.argv[1], 8080))
s.sendall(b"POST /upload HTTP/1.1\\r\\nHost: backend\\r\\nContent-Length: 1073741824\\r\\n\\r\\n")
s.settimeout(2)
chunk = bytes(65536)
try:
    while True:
        s.send(chunk)
except TimeoutError:
    pass  # no room for 2 s: the sidecar stopped reading us (the upstream reads nothing)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("reset", flush=True)
"""


def stuck_upstream(lab: MeshLab) -> tuple[Pod, Lines]:
    """A client pod whose sidecar routes to an upstream that never answers, with a retry
    policy that would retry a reset try, and the JSON access log."""
    client, backend = lab.add_pod("client", 10), lab.add_pod("v1", 11)
    stuck = Lines(backend.serve_peer("hang", "8080"))
    retries = {"attempts": 3, "retry_on": "reset,5xx"}
    config = http_service([backend], http=[{"retries": retries}])
    lab.intercept(client)
    lab.start_sidecar(
        client, lab.write_config("mesh.yaml", yaml.safe_dump(config)), "--access-log", "json"
    )
    return client, stuck


def assert_cancelled_once(client: Pod, stuck: Lines) -> None:
    """The upstream connection closed at once (no timeout was going to), one try only, DC."""
    wait_until(lambda: "closed" in stuck.snapshot(), 5, "the upstream connection to close")
    assert stuck.snapshot().count("request") == 1, "a retry was sent for a client that left"
    logged = wait_until(lambda: access_entries(client), 5, "the access log entry")
    assert logged[0]["response_flags"] == "DC", logged
    assert stat(client, "upstream_rq_retry.cluster=") == 0


@interception_agnostic
def test_a_client_that_resets_while_waiting_cancels_the_upstream_request(
    mesh_lab: MeshLab,
) -> None:
    """As Envoy: the client gives up (a reset) before the upstream answered, so the upstream
    request is reset too (DC) rather than held until some timeout, and it is not retried."""
    client, stuck = stuck_upstream(mesh_lab)
    caller = client.spawn_piped(SYSTEM_PYTHON, "-c", ASK_THEN_RESET, VIP, "/slow")
    wait_until(lambda: "request" in stuck.snapshot(), 10, "the request at the upstream")
    caller.stdin.write("go\n")
    caller.stdin.flush()
    assert caller.stdout.readline().strip() == "reset"
    assert_cancelled_once(client, stuck)


@interception_agnostic
def test_a_client_that_resets_mid_upload_to_a_stalled_upstream_cancels_it(
    mesh_lab: MeshLab,
) -> None:
    """The upstream reads no body, so the sidecar stops reading the client (backpressure) and
    the event loop no longer watches that socket: the client's reset is still noticed."""
    client, stuck = stuck_upstream(mesh_lab)
    done = client.run(SYSTEM_PYTHON, "-c", UPLOAD_THEN_RESET, VIP, timeout=60)
    assert done.stdout.strip() == "reset", done.stderr
    assert_cancelled_once(client, stuck)


# A client that half-closes (shutdown SHUT_WR) once its request is sent, as BusyBox wget does,
# then reads the answer to the end.
ASK_THEN_HALF_CLOSE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=10)
s.sendall(b"GET /?delay=0.3 HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n")
s.shutdown(socket.SHUT_WR)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
print(answer.split(b"\\r\\n", 1)[0].decode())
"""


@interception_agnostic
def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(
    mesh_lab: MeshLab,
) -> None:
    """A FIN is not a client leaving (unlike a reset): the answer, which the upstream sends
    after the FIN arrived, still reaches it, and nothing is logged as DC."""
    client, _ = bring_up(mesh_lab)
    done = client.run(SYSTEM_PYTHON, "-c", ASK_THEN_HALF_CLOSE, VIP, timeout=30)
    assert done.stdout.strip() == "HTTP/1.1 200 OK", done.stdout + done.stderr
    wait_until(
        lambda: '"GET /?delay=0.3 HTTP/1.1" 200 - ' in client.read_sidecar_log(), 5, "the log"
    )
