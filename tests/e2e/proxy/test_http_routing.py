"""The HTTP/1.1 router end to end: unmodified clients (curl, Python's http.client) call a
service's VIP; the sidecar routes by path and header, splits by weight across subsets,
retries, times out, pools upstream connections, and counts and logs every request.

Backends are Python's http.server with keep-alive (tests/support/http_peers.py) answering
JSON that names the backend, so a test sees which one served each request.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from support.http_mesh import URL, VIP, curl_json, curl_status, http_service
from support.lab import wait_until
from support.mesh_lab import MeshLab, Pod, interception_agnostic, stat

# The backends' pods are named after their version label (http_service labels them so).
SUBSETS = [{"name": n, "labels": {"version": n}} for n in ("v1", "v2")]

# Outbound interception: the tests that exercise how a connection reaches the sidecar run
# under iptables and eBPF (conftest.py); those about what the router does after that, once.
OUTBOUND = True


def bring_up(lab: MeshLab, names: list[str], config=None, **extra) -> tuple[Pod, list[Pod]]:
    client = lab.add_pod("client", 10)
    backends = [lab.add_pod(name, 11 + n) for n, name in enumerate(names)]
    for pod in backends:
        pod.serve_http11(8080, pod.name)
    config = config or http_service(backends, **extra)
    lab.intercept(client)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    return client, backends


def counts(backend: Pod, client: Pod) -> dict:
    """The backend's own counters, asked directly (passthrough: not an HTTP route)."""
    return json.loads(client.curl(f"http://{backend.ip}:8080/__counts"))


def test_requests_reach_the_service_with_forwarding_headers(
    mesh_lab: MeshLab, interception: str
) -> None:
    client, _ = bring_up(mesh_lab, ["v1"])
    answer = curl_json(client, "/hello?x=1", "-H", "x-request-id: abc")
    assert answer["label"] == "v1"
    assert answer["path"] == "/hello?x=1"
    headers = dict(answer["headers"])
    assert headers["x-request-id"] == "abc"
    assert headers["x-forwarded-proto"] == "http"
    # the address the sidecar's downstream socket has: eBPF rewrites connect() to loopback
    assert headers["x-forwarded-for"] == (client.ip if interception == "iptables" else "127.0.0.1")
    assert "connection" not in headers or headers["connection"] != "close"
    # a request without an id gets one, the same for the upstream and the access log
    generated = dict(curl_json(client, "/")["headers"])["x-request-id"]
    assert len(generated) == 36
    wait_until(lambda: generated in client.read_sidecar_log(), 5, "the access log line")


@interception_agnostic
@pytest.mark.vm
def test_route_by_path_and_header_to_subsets(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(
        mesh_lab,
        ["v1", "v2"],
        subsets=SUBSETS,
        http=[
            {
                "name": "canary",
                "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                "route": [{"subset": "v2"}],
            },
            {"name": "api", "match": [{"uri": {"prefix": "/api/"}}], "route": [{"subset": "v2"}]},
            {"name": "rest", "route": [{"subset": "v1"}]},
        ],
    )
    assert {curl_json(client, "/")["label"] for _ in range(4)} == {"v1"}
    assert curl_json(client, "/api/items")["label"] == "v2"
    assert curl_json(client, "/apix")["label"] == "v1"
    assert curl_json(client, "/", "-H", "x-canary: yes")["label"] == "v2"
    assert curl_json(client, "/", "-H", "x-canary: no")["label"] == "v1"


@interception_agnostic
def test_weighted_split_90_10_over_1000_requests(mesh_lab: MeshLab) -> None:
    split = [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]
    client, _ = bring_up(mesh_lab, ["v1", "v2"], subsets=SUBSETS, http=[{"route": split}])
    replies = client.http_client(URL + "/", 1000)
    assert all(r["status"] == 200 for r in replies)
    share = Counter(r["label"] for r in replies)["v2"] / len(replies)
    assert 0.07 <= share <= 0.13, share


@interception_agnostic
@pytest.mark.vm
def test_retries_hide_an_upstream_failing_half_the_requests(mesh_lab: MeshLab) -> None:
    retries = {"attempts": 10, "retry_on": "5xx", "backoff_base": "1ms", "backoff_max": "5ms"}
    client, backends = bring_up(mesh_lab, ["a", "b"], http=[{"retries": retries}])
    replies = client.http_client(URL + "/?fail=0.5", 400)
    ok = sum(r["status"] == 200 for r in replies)
    assert ok / len(replies) >= 0.99, ok
    failures = sum(counts(pod, client)["failures"] for pod in backends)
    assert failures > 100  # the backends really failed about half of the tries
    assert stat(client, "upstream_rq_retry.cluster=") == failures - (len(replies) - ok)
    assert stat(client, "upstream_rq_retry_success") > 0


@interception_agnostic
def test_upstream_connections_are_kept_alive_and_reused(mesh_lab: MeshLab) -> None:
    client, (backend,) = bring_up(mesh_lab, ["v1"])
    replies = client.http_client(URL + "/", 200, "--new-connection")
    assert [r["status"] for r in replies] == [200] * 200
    # 200 client connections, 200 requests: the sidecar reused its upstream connection
    assert counts(backend, client)["connections"] <= 3
    assert stat(client, "upstream_cx_pool_reuse") >= 197


@interception_agnostic
def test_route_timeout_answers_504_ut(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab, ["v1"], http=[{"timeout": "300ms", "retries": {"attempts": 0}}])
    assert curl_status(client, "/?delay=2") == "504"
    assert stat(client, "upstream_rq_timeout") == 1
    wait_until(lambda: '" 504 UT ' in client.read_sidecar_log(), 5, "a 504 UT access log line")
    assert curl_status(client, "/") == "200"  # the connection pool is still usable


@interception_agnostic
def test_per_try_timeout_retries_on_another_try(mesh_lab: MeshLab) -> None:
    retries = {"attempts": 2, "per_try_timeout": "200ms", "retry_on": "5xx"}
    client, _ = bring_up(mesh_lab, ["v1"], http=[{"retries": retries}])
    assert curl_status(client, "/?delay=1") == "504"
    assert stat(client, "upstream_rq_per_try_timeout") == 3
    assert stat(client, "upstream_rq_retry.cluster=") == 2
    wait_until(lambda: " 504 URX,UT " in client.read_sidecar_log(), 5, "a 504 URX,UT log line")


@interception_agnostic
def test_local_replies_no_route_no_endpoint_connect_failure(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    config = {
        "workload": {"name": "client"},
        "services": [
            {"name": "empty", "vip": VIP, "ports": [{"port": 8080, "protocol": "http"}]},
            {
                "name": "refusing",
                "vip": "10.96.0.11",
                "ports": [{"port": 8080, "protocol": "http"}],
                "endpoints": [{"address": "10.88.0.99"}],  # nobody there: connect fails
                "traffic_policy": {"connect_timeout": "300ms"},
                "http": [{"retries": {"attempts": 0}}],
            },
            {
                "name": "routed",
                "vip": "10.96.0.12",
                "ports": [{"port": 8080, "protocol": "http"}],
                "endpoints": [{"address": "10.88.0.98"}],
                "http": [{"match": [{"uri": {"exact": "/only"}}]}],
            },
        ],
    }
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    assert client.curl(URL + "/", "-w", " %{http_code}") == "no healthy upstream 503"
    assert client.curl("http://10.96.0.11:8080/", "-o", "/dev/null", "-w", "%{http_code}") == "503"
    assert client.curl("http://10.96.0.12:8080/x", "-o", "/dev/null", "-w", "%{http_code}") == "404"
    log = client.read_sidecar_log()
    wait_until(lambda: " 404 NR " in client.read_sidecar_log(), 5, "the NR access log line")
    log = client.read_sidecar_log()
    assert " 503 UH " in log  # not retried: no host could take a retry
    assert " 503 UF " in log  # retries off on this route: no URX


@interception_agnostic
def test_every_request_is_counted_once_everywhere(mesh_lab: MeshLab) -> None:
    client, _ = bring_up(mesh_lab, ["v1", "v2"])
    replies = client.http_client(URL + "/", 50) + client.http_client(URL + "/?status=404", 7)
    assert Counter(r["status"] for r in replies) == {200: 50, 404: 7}
    assert stat(client, "downstream_rq_2xx") == 50
    assert stat(client, "downstream_rq_4xx") == 7
    assert stat(client, "downstream_rq_total") == 57
    wait_until(lambda: client.read_sidecar_log().count('"GET /') == 57, 5, "57 access log lines")
    code, text = client.admin("/stats/prometheus")
    assert code == 200
    totals = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
    ]
    assert sum(totals) == 57
    assert 'response_code="404"' in text
    assert "istio_request_duration_milliseconds_bucket" in text


def test_auto_port_sniffs_http_and_lets_server_first_tcp_through(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("v1", 11)
    backend.serve_http11(8080, "v1")
    backend.serve_peer("banner", "3307")
    config = http_service([backend], protocol="auto")
    config["services"][0]["ports"].append({"name": "db", "port": 3307, "protocol": "auto"})
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    assert curl_json(client, "/")["label"] == "v1"
    assert stat(client, "downstream_rq_2xx") == 1
    # A server-first protocol on an auto port: the client says nothing until it hears the
    # banner, so sniffing gives up after its timeout and relays the bytes as TCP.
    talk = (
        f"import socket; s = socket.create_connection(('{VIP}', 3307), timeout=5); "
        "banner = s.recv(100); s.sendall(b'ping'); print(banner.decode().strip(), "
        "s.recv(100).decode())"
    )
    done = client.run("/usr/bin/python3", "-c", talk, timeout=20)
    assert done.stdout.split() == ["HELLO", "ping"], done.stderr
    assert stat(client, "downstream_rq_total") == 1  # the TCP connection is not a request


@interception_agnostic
def test_two_sidecars_count_each_request_on_both_sides(mesh_lab: MeshLab) -> None:
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("v1", 11)
    backend.serve_http11(8080, "v1")
    workload = {"name": "backend-v1", "inbound_ports": [{"port": 8080, "protocol": "http"}]}
    mesh_lab.intercept(backend)
    mesh_lab.start_sidecar(
        backend, mesh_lab.write_config("b.yaml", yaml.safe_dump({"workload": workload}))
    )
    mesh_lab.intercept(client)
    config = http_service([backend])
    mesh_lab.start_sidecar(client, mesh_lab.write_config("c.yaml", yaml.safe_dump(config)))
    replies = client.http_client(URL + "/?status=201", 20)
    assert [r["status"] for r in replies] == [201] * 20
    answer = curl_json(client, "/")
    assert answer["peer"] == "127.0.0.6"  # the backend's sidecar handed it to the app
    assert stat(backend, "downstream_rq_2xx") == 21
    assert stat(client, "downstream_rq_2xx") == 21
    code, text = backend.admin("/stats/prometheus")
    assert code == 200
    inbound = [
        line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in inbound) == 21
    assert any('destination_workload="backend-v1"' in line for line in inbound)
    assert any('response_code="201"' in line for line in inbound)
