"""Issue 19, case 14: after a mixed run, every way the sidecar counts agrees with what the
clients saw.

A client pod (init + sidecar, two workers, the JSON access log) calls one service on a VIP
with three ports: HTTP/1.1 (Python's http.server: 200s, 404s, and 503s that the default
retry policy retries twice, within its budget), gRPC (grpcio: OK and NOT_FOUND) and TCP (an
echo server). All the clients run at once, so both workers serve all three protocols.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import yaml
from support.echo_lab import CLIENTS
from support.h2_mesh import (
    GRPC_PEERS,
    GRPC_PORT,
    VENV_PYTHON,
    grpc_call,
    prometheus_sum,
    start_venv_peer,
)
from support.http_mesh import VIP, access_entries
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import HTTP_PEERS, MeshLab, Pod, stat

from .conftest import Figure

HTTP_PORT, TCP_PORT = 8080, 7000
HTTP_CALLS = {200: 300, 404: 100, 503: 50}
GRPC_CALLS = {"OK": ("hello", 60), "NOT_FOUND": ("status=5", 20)}
TCP_CONNECTIONS = 200


def mesh(backend: Pod) -> dict:
    ports = [
        {"name": "http", "port": HTTP_PORT, "protocol": "http"},
        {"name": "grpc", "port": GRPC_PORT, "protocol": "grpc"},
        {"name": "tcp", "port": TCP_PORT, "protocol": "tcp"},
    ]
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": VIP,
                "ports": ports,
                "endpoints": [{"address": backend.ip}],
                "traffic_policy": {"connect_timeout": "1s"},
            }
        ],
    }


def clients(client: Pod) -> dict[str, subprocess.Popen]:
    """Every client of the run, started at once."""
    running = {}
    for status, count in HTTP_CALLS.items():
        url = f"http://{VIP}:{HTTP_PORT}/?status={status}"
        running[f"http {status}"] = client.spawn_piped(
            SYSTEM_PYTHON, str(HTTP_PEERS), "client", url, str(count), "--parallel", "4"
        )
    for code, (request, count) in GRPC_CALLS.items():
        target = f"{VIP}:{GRPC_PORT}"
        running[f"grpc {code}"] = client.spawn_piped(
            VENV_PYTHON, str(GRPC_PEERS), "call", target, "Echo", request, "--count", str(count)
        )
    running["tcp"] = client.spawn_piped(
        SYSTEM_PYTHON, str(CLIENTS), "burst", VIP, str(TCP_PORT), str(TCP_CONNECTIONS), "8"
    )
    return running


def outputs(running: dict[str, subprocess.Popen]) -> dict[str, list[dict]]:
    seen = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err)
        seen[name] = [json.loads(line) for line in out.splitlines() if line.strip()]
    return seen


def lines_of(seen: dict[str, list[dict]], kind: str) -> list[dict]:
    return [line for name, lines in seen.items() if name.startswith(kind) for line in lines]


def test_14_a_mixed_run_is_counted_the_same_by_clients_stats_access_log_and_istio_metrics(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: per status class, the requests the clients saw == downstream_rq_<class> == the
    access log's HTTP entries == istio_requests_total (and per gRPC status); the log's retries
    sum to upstream_rq_retry, and its 503s retried less than twice are the retry budget's
    overflows; upstream_rq_total == requests + retries == what the origin served; TCP:
    connections the client made == istio_tcp_connections_opened/closed == access-log TCP
    entries, and the bytes the client sent and got back == istio_tcp_received/sent_bytes ==
    the entries' byte counts."""
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("backend", 11)
    backend.serve_http11(HTTP_PORT, "backend")
    backend.serve_peer("echo", str(TCP_PORT))
    start_venv_peer(backend, GRPC_PEERS, "serve", str(GRPC_PORT), "backend")
    mesh_lab.intercept(client)
    config = mesh_lab.write_config("mesh.yaml", yaml.safe_dump(mesh(backend)))
    mesh_lab.start_sidecar(client, config, "--concurrency", "2", "--access-log", "json")

    seen = outputs(clients(client))

    # what the clients saw
    http_seen = Counter(line["status"] for line in lines_of(seen, "http"))
    assert http_seen == Counter(HTTP_CALLS), http_seen
    grpc_seen = Counter(line["code"] for line in lines_of(seen, "grpc"))
    assert grpc_seen == {code: count for code, (_request, count) in GRPC_CALLS.items()}
    (tcp_seen,) = seen["tcp"]
    assert tcp_seen["ok"] == TCP_CONNECTIONS and tcp_seen["failed"] == 0, tcp_seen
    tcp_bytes = sum(len(f"ping {index}\n") for index in range(TCP_CONNECTIONS))

    requests = sum(HTTP_CALLS.values()) + sum(count for _request, count in GRPC_CALLS.values())
    by_class = {
        "2xx": HTTP_CALLS[200] + requests - sum(HTTP_CALLS.values()),  # gRPC answers are 200s
        "4xx": HTTP_CALLS[404],
        "5xx": HTTP_CALLS[503],
    }

    # the access log: one entry per request and per TCP connection (written once the
    # request or connection ended, so waited for)
    entries = wait_until(
        lambda: (
            (found := access_entries(client)) and len(found) >= requests + TCP_CONNECTIONS and found
        ),
        15,
        "every access log entry",
    )
    http_entries = [entry for entry in entries if "method" in entry]
    tcp_entries = [entry for entry in entries if "direction" in entry]
    assert len(http_entries) == requests and len(tcp_entries) == TCP_CONNECTIONS, len(entries)
    logged = Counter(f"{entry['response_code'] // 100}xx" for entry in http_entries)
    assert logged == by_class, logged
    # Retries: the log's per-request count sums to the stat; a 503 that was retried fewer
    # than twice was stopped by the retry budget (the clients' 503s come 4 at a time), and
    # each such stop is an upstream_rq_retry_overflow.
    retries = stat(client, "upstream_rq_retry.cluster=")  # not _overflow nor _success
    assert sum(entry["retries"] for entry in http_entries) == retries
    short = [e for e in http_entries if e["response_code"] == 503 and e["retries"] < 2]
    assert len(short) == stat(client, "upstream_rq_retry_overflow")
    assert all(e["retries"] == 0 for e in http_entries if e["response_code"] != 503)

    # the proxy's own stats
    for status_class, count in by_class.items():
        assert stat(client, f"downstream_rq_{status_class}") == count, status_class
    assert stat(client, "downstream_rq_total") == requests
    assert stat(client, "upstream_rq_total") == requests + retries

    # Istio's metrics
    for code, count in ((200, by_class["2xx"]), (404, HTTP_CALLS[404]), (503, HTTP_CALLS[503])):
        assert prometheus_sum(client, "istio_requests_total", f'response_code="{code}"') == count
    for status, count in (("0", GRPC_CALLS["OK"][1]), ("5", GRPC_CALLS["NOT_FOUND"][1])):
        grpc = prometheus_sum(client, "istio_requests_total", f'grpc_response_status="{status}"')
        assert grpc == count, status
    tcp = 'request_protocol="tcp"'
    assert prometheus_sum(client, "istio_tcp_connections_opened_total", tcp) == TCP_CONNECTIONS
    assert prometheus_sum(client, "istio_tcp_connections_closed_total", tcp) == TCP_CONNECTIONS
    assert prometheus_sum(client, "istio_tcp_received_bytes_total", tcp) == tcp_bytes
    assert prometheus_sum(client, "istio_tcp_sent_bytes_total", tcp) == tcp_bytes
    assert sum(entry["bytes_received"] for entry in tcp_entries) == tcp_bytes
    assert sum(entry["bytes_sent"] for entry in tcp_entries) == tcp_bytes

    # what the origins served, asked last and directly (their own counters)
    served = json.loads(client.curl(f"http://{backend.ip}:{HTTP_PORT}/__counts"))
    assert served["requests"] == sum(HTTP_CALLS.values()) + retries, served
    (counts,) = grpc_call(client, "Counts", "", target=f"{backend.ip}:{GRPC_PORT}")
    grpc_served = json.loads(counts["reply"])
    assert grpc_served["calls"] == sum(count for _request, count in GRPC_CALLS.values())

    figure("HTTP + gRPC requests", requests, "", "clients == stats == log == istio")
    figure("retries", retries, "", "upstream_rq_total == requests + retries")
    figure("retries stopped by the budget", len(short), "", "== upstream_rq_retry_overflow")
    figure("TCP connections", TCP_CONNECTIONS, "", "clients == istio == log")
    figure("TCP bytes each way", tcp_bytes, "B", "clients == istio == log")
