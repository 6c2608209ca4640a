"""HTTP/2 through the sidecar with unmodified clients: curl with prior knowledge and h2load call
a service's VIP; the sidecar serves the connection with h2 (sniffed on an ``auto`` port,
declared on an ``http2`` one), routes every stream, and forwards it over HTTP/1.1 or HTTP/2
as the service port says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal

import pytest
from support.h2_mesh import H2_PEERS, one_service, start_mesh, start_venv_peer
from support.http_mesh import ASK_THEN_RESET, URL, VIP, access_entries
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import Lines, MeshLab, Pod, interception_agnostic, stat
from support.prereq import require

# Outbound interception: how an HTTP/2 connection reaches the router runs under iptables and
# eBPF (conftest.py); what the router does with its streams after that, once.
OUTBOUND = True

H2C = ("--http2-prior-knowledge", "-w", "\n%{http_version}")


def h2_backend(lab: MeshLab, protocol: str) -> Pod:
    """A client pod (returned) with its sidecar, and one backend pod running the HTTP/2 test
    peer behind a service port of ``protocol``."""
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("v1", 11)
    start_venv_peer(backend, H2_PEERS, "serve", "8080", "v1")
    start_mesh(lab, client, one_service([backend], 8080, protocol))
    return client


def curl_h2(client, path: str, *extra: str) -> tuple[dict, str]:
    """A request with HTTP/2 prior knowledge: the JSON answer and the HTTP version used."""
    reply = client.curl(URL + path, *H2C, *extra)
    assert not reply.startswith("ERROR"), reply
    body, _, version = reply.rpartition("\n")
    return json.loads(body), version


@pytest.mark.vm
def test_prior_knowledge_on_an_http_port_reaches_an_http11_backend(
    mesh_lab: MeshLab, interception: str
) -> None:
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("v1", 11)
    backend.serve_http11(8080, "v1")
    start_mesh(mesh_lab, client, one_service([backend], 8080, "http"))
    answer, version = curl_h2(client, "/h2?x=1", "-H", "x-request-id: h2-abc")
    assert version == "2"
    assert (answer["label"], answer["path"]) == ("v1", "/h2?x=1")
    headers = dict(answer["headers"])
    assert headers["x-request-id"] == "h2-abc"
    assert headers["host"] == f"{VIP}:8080"
    # the address the sidecar's downstream socket has: eBPF rewrites connect() to loopback
    assert headers["x-forwarded-for"] == (client.ip if interception == "iptables" else "127.0.0.1")
    # the same port still serves HTTP/1.1 clients
    assert json.loads(client.curl(URL + "/h1"))["label"] == "v1"
    # a body many flow-control windows long arrives intact (chunked towards HTTP/1.1)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    upload = mesh_lab.workdir / "upload.bin"
    upload.write_bytes(payload)
    upload.chmod(0o644)
    posted, _ = curl_h2(client, "/upload", "--data-binary", f"@{upload}")
    assert (posted["body_bytes"], posted["body_sha256"]) == (
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )
    assert stat(client, "downstream_cx_http2_total") == 2
    assert stat(client, "downstream_rq_2xx") == 3
    wait_until(
        lambda: '"GET /h2?x=1 HTTP/2" 200' in client.read_sidecar_log(), 5, "an HTTP/2 log line"
    )


@interception_agnostic
def test_http2_port_reaches_an_http2_backend_on_one_reused_connection(mesh_lab: MeshLab) -> None:
    client = h2_backend(mesh_lab, "http2")
    for n in range(3):
        answer, version = curl_h2(client, f"/n{n}", "--data-binary", "x" * 100_000)
        assert version == "2"
        assert (answer["label"], answer["protocol"], answer["method"]) == ("v1", "HTTP/2", "POST")
        assert answer["path"] == f"/n{n}"
        assert answer["body_bytes"] == 100_000
        assert answer["authority"] == f"{VIP}:8080"
    # three client connections, one multiplexed upstream connection
    assert answer["connections"] == 1
    assert stat(client, "upstream_cx_http2_total") == 1
    assert stat(client, "downstream_cx_http2_total") == 3


def test_prior_knowledge_on_an_auto_port_is_http2_to_the_upstream_too(
    mesh_lab: MeshLab, interception: str
) -> None:
    """An undeclared port's upstream speaks what the client speaks (Istio's useClientProtocol):
    HTTP/2 from the client, HTTP/2 to the backend."""
    client = h2_backend(mesh_lab, "auto")
    answer, version = curl_h2(client, "/auto")
    assert (version, answer["protocol"], answer["path"]) == ("2", "HTTP/2", "/auto")
    assert stat(client, "downstream_cx_http2_total") == 1
    assert stat(client, "upstream_cx_http2_total") == 1


@interception_agnostic
def test_100_concurrent_streams_on_one_connection(mesh_lab: MeshLab) -> None:
    require(shutil.which("h2load") is not None, "h2load (Debian's nghttp2-client)")
    client = h2_backend(mesh_lab, "http2")
    done = client.run("h2load", "-n", "2000", "-c", "1", "-m", "100", URL + "/load", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", done.stdout
    )
    assert summary is not None, done.stdout
    assert summary.groups() == ("2000", "2000", "2000", "2000"), done.stdout
    assert "status codes: 2000 2xx" in done.stdout, done.stdout
    assert stat(client, "downstream_rq_2xx") == 2000
    assert stat(client, "upstream_cx_http2_total") == 1


@interception_agnostic
def test_http11_client_reaches_an_http2_backend_of_an_http2_port(mesh_lab: MeshLab) -> None:
    client = h2_backend(mesh_lab, "http2")
    replies = client.http_client(URL + "/from-h1", 20)  # http.client, one keep-alive connection
    assert [r["status"] for r in replies] == [200] * 20
    assert {r["label"] for r in replies} == {"v1"}
    posted = json.loads(client.curl(URL + "/post", "--data-binary", "y" * 70_000))
    assert (posted["protocol"], posted["method"], posted["body_bytes"]) == (
        "HTTP/2",
        "POST",
        70_000,
    )
    assert posted["authority"] == f"{VIP}:8080"
    assert stat(client, "upstream_cx_http2_total") == 1
    assert stat(client, "downstream_cx_http2_total") == 0
    assert stat(client, "downstream_rq_2xx") == 21


@interception_agnostic
def test_upstream_resets_become_local_replies_or_client_resets(mesh_lab: MeshLab) -> None:
    client = h2_backend(mesh_lab, "http2")
    # reset before the head: nothing was sent yet, so the client gets Envoy's 503
    before = client.curl(URL + "/reset", "--http2-prior-knowledge", "-w", " %{http_code}")
    assert before.endswith("reset reason: remote reset 503"), before
    # reset in the middle of the body: the client's stream is reset too
    during = client.curl(URL + "/reset-mid", "--http2-prior-knowledge", "-o", "/dev/null")
    assert during.startswith("ERROR"), during
    log = wait_until(
        lambda: (text := client.read_sidecar_log()).count("/reset") == 2 and text, 5, "2 lines"
    )
    assert '"GET /reset HTTP/2" 503 UR ' in log
    assert '"GET /reset-mid HTTP/2" 200 UR ' in log
    # the upstream connection survived both stream resets
    answer, _ = curl_h2(client, "/after")
    assert answer["label"] == "v1"
    assert stat(client, "upstream_cx_http2_total") == 1


@interception_agnostic
def test_drain_sends_goaway_and_lets_the_stream_in_flight_finish(mesh_lab: MeshLab) -> None:
    require(shutil.which("nghttp") is not None, "nghttp (Debian's nghttp2-client)")
    client = h2_backend(mesh_lab, "http2")
    caller = client.spawn("nghttp", "-v", URL + "/delay/1")
    wait_until(lambda: stat(client, "upstream_rq_total") == 1, 5, "the request to be upstream")
    os.kill(client.sidecar_pid(), signal.SIGTERM)
    out, err = caller.communicate(timeout=15)
    assert caller.returncode == 0, out + err
    assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]" in out, out  # what we advertise
    goaway = out.index("recv GOAWAY frame")
    status = re.search(r"recv \(stream_id=\d+\) :status: 200", out)
    assert status is not None and goaway < status.start(), out  # GOAWAY first, then the answer
    assert '"label": "v1"' in out
    assert client.sidecar.wait(10) == 0


@interception_agnostic
def test_an_http11_client_that_resets_cancels_its_http2_upstream_stream(mesh_lab: MeshLab) -> None:
    """HTTP/1.1 to an http2 port: a client that gives up while the upstream has not answered
    resets its upstream stream (RST_STREAM), not the shared connection, and is not retried."""
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("v1", 11)
    peer = Lines(start_venv_peer(backend, H2_PEERS, "serve", "8080", "v1"))
    retries = {"attempts": 3, "retry_on": "reset,5xx"}  # would retry a reset stream
    config = one_service([backend], 8080, "http2", http=[{"retries": retries}])
    start_mesh(mesh_lab, client, config, "--access-log", "json")
    caller = client.spawn_piped(SYSTEM_PYTHON, "-c", ASK_THEN_RESET, VIP, "/hang")
    wait_until(lambda: "request /hang" in peer.snapshot(), 10, "the request at the upstream")
    caller.stdin.write("go\n")
    caller.stdin.flush()
    assert caller.stdout.readline().strip() == "reset"
    wait_until(lambda: "cancelled /hang" in peer.snapshot(), 5, "the upstream stream's reset")
    assert peer.snapshot().count("request /hang") == 1, "retried for a client that left"
    logged = wait_until(lambda: access_entries(client), 5, "the access log entry")
    assert logged[0]["response_flags"] == "DC", logged
    assert stat(client, "upstream_rq_retry.cluster=") == 0
    answer = json.loads(client.curl(URL + "/after"))  # on the same upstream connection
    assert (answer["label"], answer["connections"]) == ("v1", 1)
    assert stat(client, "upstream_cx_http2_total") == 1
