"""gRPC through the sidecar: an unmodified grpcio client calls a service's VIP on a ``grpc``
port, an unmodified grpcio server answers (tests/support/grpc_peers.py). Statuses and
trailers pass through and are counted (``grpc_response_status``), deadlines hold, UNAVAILABLE
is retried when the route says so, and a cancelled call does not leave its upstream stream
open.
"""

from __future__ import annotations

import json

import pytest
from support.h2_mesh import (
    GRPC_PEERS,
    GRPC_PORT,
    GRPC_TARGET,
    grpc_call,
    grpc_peer,
    one_service,
    prometheus_sum,
    start_mesh,
    start_venv_peer,
)
from support.lab import wait_until
from support.mesh_lab import MeshLab, Pod, interception_agnostic, stat

# Outbound interception: a gRPC call reaching the router runs under iptables and eBPF
# (conftest.py); deadlines, retries and resets once.
OUTBOUND = True


def bring_up(lab: MeshLab, names: list[str], **extra) -> tuple[Pod, list[Pod]]:
    client = lab.add_pod("client", 10)
    backends = [lab.add_pod(name, 11 + n) for n, name in enumerate(names)]
    for pod in backends:
        start_venv_peer(pod, GRPC_PEERS, "serve", str(GRPC_PORT), pod.name)
    start_mesh(lab, client, one_service(backends, GRPC_PORT, "grpc", **extra))
    return client, backends


def server_counts(client: Pod, backend: Pod) -> dict:
    """The server's own counters, asked directly (a passthrough destination)."""
    reply = grpc_call(client, "Counts", "", target=f"{backend.ip}:{GRPC_PORT}")
    return json.loads(reply[0]["reply"])


@pytest.mark.vm
def test_unary_and_server_streaming_calls_with_status_codes(
    mesh_lab: MeshLab, interception: str
) -> None:
    client, _ = bring_up(mesh_lab, ["v1"])
    assert (
        grpc_call(client, "Echo", "hello", "--count", "3")
        == [{"code": "OK", "reply": "v1:hello"}] * 3
    )
    streamed = grpc_peer(client, "stream", GRPC_TARGET, "50")
    assert streamed == {"code": "OK", "replies": [f"v1:{i}" for i in range(50)]}
    (not_found,) = grpc_call(client, "Echo", "status=5")
    assert (not_found["code"], not_found["details"]) == ("NOT_FOUND", "asked for NOT_FOUND")
    (denied,) = grpc_call(client, "Echo", "status=7")
    assert denied["code"] == "PERMISSION_DENIED"
    # every call counted once, with its gRPC status and Istio's protocol label
    ok = prometheus_sum(client, "istio_requests_total", 'grpc_response_status="0"')
    assert ok == 4
    assert prometheus_sum(client, "istio_requests_total", 'grpc_response_status="5"') == 1
    assert prometheus_sum(client, "istio_requests_total", 'grpc_response_status="7"') == 1
    assert prometheus_sum(client, "istio_requests_total", 'request_protocol="grpc"') == 6
    assert prometheus_sum(client, "istio_requests_total", 'response_code="200"') == 6
    assert stat(client, "upstream_cx_http2_total") == 1  # every call on one connection
    log = wait_until(
        lambda: (text := client.read_sidecar_log()).count("/detour.Lab/") >= 6 and text,
        5,
        "six access log lines",
    )
    assert '"POST /detour.Lab/Stream HTTP/2" 200' in log


def test_a_grpc_call_on_an_undeclared_port_reaches_its_server(
    mesh_lab: MeshLab, interception: str
) -> None:
    """An ``auto`` port: the preface is sniffed and the call is routed as gRPC, over HTTP/2 to
    the server too."""
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("v1", 11)
    start_venv_peer(backend, GRPC_PEERS, "serve", str(GRPC_PORT), "v1")
    start_mesh(mesh_lab, client, one_service([backend], GRPC_PORT, "auto"))
    assert grpc_call(client, "Echo", "auto") == [{"code": "OK", "reply": "v1:auto"}]
    assert prometheus_sum(client, "istio_requests_total", 'request_protocol="grpc"') == 1


@interception_agnostic
def test_deadlines_client_and_route(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab, ["v1"], http=[{"timeout": "1s", "retries": {"attempts": 0}}])
    # the client's deadline is shorter than the route's: grpcio gives up (and resets the
    # stream) as the sidecar's own copy of the deadline expires, whichever is first
    (call,) = grpc_call(client, "Echo", "delay=3", "--timeout", "0.3")
    assert call["code"] == "DEADLINE_EXCEEDED"
    # the sidecar honours grpc-timeout itself: a client that waits longer than the deadline
    # it sent (curl, a gRPC frame by hand) gets the sidecar's DEADLINE_EXCEEDED at 300 ms
    frame = mesh_lab.workdir / "frame.bin"
    frame.write_bytes(b"\0" + len(b"delay=3").to_bytes(4, "big") + b"delay=3")
    frame.chmod(0o644)
    head = client.curl(
        f"http://{GRPC_TARGET}/detour.Lab/Echo",
        "--http2-prior-knowledge",
        "-D", "-", "-o", "/dev/null",
        "-w", "%{time_total}",
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "-H", "grpc-timeout: 300m",
        "--data-binary", f"@{frame}",
    )  # fmt: skip
    assert "grpc-status: 4" in head, head
    assert float(head.rsplit("\n", 1)[1]) < 2.0, head
    # no client deadline: the route's timeout answers with a gRPC DEADLINE_EXCEEDED
    (call,) = grpc_call(client, "Echo", "delay=3")
    assert call["code"] == "DEADLINE_EXCEEDED"
    assert call["details"] == "upstream request timeout"
    log = wait_until(
        lambda: (text := client.read_sidecar_log()).count("/detour.Lab/Echo") == 3 and text,
        5,
        "three access log lines",
    )
    # the first call's deadline was ours (UT) or the client's reset (DR), as timing had it
    timed_out = log.count(" 200 UT ")
    assert timed_out in (2, 3), log
    assert prometheus_sum(client, "istio_requests_total", 'grpc_response_status="4"') == timed_out
    assert stat(client, "upstream_rq_timeout") == timed_out
    assert grpc_call(client, "Echo", "fast") == [{"code": "OK", "reply": "v1:fast"}]


@interception_agnostic
def test_no_endpoint_is_a_grpc_unavailable(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    start_mesh(mesh_lab, client, one_service([], GRPC_PORT, "grpc"))
    (call,) = grpc_call(client, "Echo", "x")
    assert (call["code"], call["details"]) == ("UNAVAILABLE", "no healthy upstream")
    wait_until(lambda: " 200 UH " in client.read_sidecar_log(), 5, "a 200 UH log line")


@interception_agnostic
def test_retries_on_unavailable_hide_a_half_failing_server(mesh_lab: MeshLab) -> None:
    retries = {
        "attempts": 10,
        "retry_on": "unavailable",
        "backoff_base": "1ms",
        "backoff_max": "5ms",
    }
    client, (backend,) = bring_up(mesh_lab, ["v1"], http=[{"retries": retries}])
    calls = grpc_call(client, "Echo", "flaky", "--count", "200", timeout=60)
    assert [c["code"] for c in calls] == ["OK"] * 200
    failures = server_counts(client, backend)["failures"]
    assert failures > 50  # the server really failed about half of the tries
    assert stat(client, "upstream_rq_retry.cluster=") == failures
    assert stat(client, "upstream_rq_retry_success") > 0
    assert prometheus_sum(client, "istio_requests_total", 'grpc_response_status="0"') == 200


@interception_agnostic
def test_a_cancelled_call_resets_its_upstream_stream(mesh_lab: MeshLab) -> None:
    client, (backend,) = bring_up(mesh_lab, ["v1"])
    cancelled = grpc_peer(client, "cancel", GRPC_TARGET)
    assert cancelled == {"first": "v1:held", "code": "CANCELLED"}
    # the server saw the cancellation: the sidecar reset the upstream stream
    wait_until(
        lambda: server_counts(client, backend) == {
            "calls": 1, "failures": 0, "active": 0, "cancelled": 1
        } or None,
        10,
        "the server to see the call cancelled",
    )  # fmt: skip
    wait_until(lambda: " 200 DR " in client.read_sidecar_log(), 5, "a 200 DR access log line")
    # the upstream connection is still good for the next call
    assert grpc_call(client, "Echo", "after") == [{"code": "OK", "reply": "v1:after"}]
    assert stat(client, "upstream_cx_http2_total") == 1
