"""Issue 19, case 5 (the parts beyond the codec's own limits, which tests/unit/proxy/http
covers with the smuggling corpus): slowloris clients are cut by the request headers timeout
while legitimate requests go on at their usual latency, and the connection limit holds.

A client pod (init + sidecar) calls an HTTP service (Python's http.server, keep-alive) on a
VIP; the hostile clients are apps of the same pod, so every connection crosses the sidecar.
"""

from __future__ import annotations

import json

import pytest
import yaml
from support.echo_lab import CLIENTS, run_client
from support.http_mesh import VIP, http_service
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import Lines, MeshLab, Pod, stat

from .conftest import Figure, soak_seconds

HEADERS_TIMEOUT = 3.0


def bring_up(lab: MeshLab, *sidecar_args: str) -> Pod:
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("backend", 11)
    backend.serve_http11(8080, "backend")
    lab.intercept(client)
    config = lab.write_config("mesh.yaml", yaml.safe_dump(http_service([backend])))
    lab.start_sidecar(client, config, *sidecar_args)
    return client


SLOWLORIS = {
    # what each trickles, the client's command, and what every one of them must be answered
    "http1": ("slowloris", "HTTP/1.1 408 Request Timeout"),
    "http2": ("h2slowloris", "GOAWAY 11"),  # ENHANCE_YOUR_CALM
}


@pytest.mark.parametrize("protocol", sorted(SLOWLORIS))
def test_5_slowloris_is_cut_by_the_headers_timeout_and_others_keep_their_latency(
    mesh_lab: MeshLab, figure: Figure, protocol: str
) -> None:
    """Pass: 1,000 connections that each trickle a request head a piece every half second
    (HTTP/1.1: a byte of a header; HTTP/2: a CONTINUATION frame, never END_HEADERS) are all
    answered (408, or GOAWAY ENHANCE_YOUR_CALM) and closed after the headers timeout and
    within twice it; none reaches the upstream; meanwhile a legitimate client's p99 stays
    within 2x its baseline."""
    command, answer = SLOWLORIS[protocol]
    client = bring_up(mesh_lab, "--request-headers-timeout", str(HEADERS_TIMEOUT))
    requests = 500 if not soak_seconds() else max(500, int(soak_seconds() * 100))
    baseline = run_client(client, "latency", VIP, 8080, requests)
    assert baseline["ok"] == requests
    upstream_before = stat(client, "upstream_rq_total")
    attackers = 1000
    attack = Lines(
        client.spawn_piped(
            SYSTEM_PYTHON, str(CLIENTS), command, VIP, "8080", str(attackers), "0.5", "60"
        )
    )
    wait_until(lambda: "ready" in attack.snapshot(), 60, "the slowloris connections to open")
    during = run_client(client, "latency", VIP, 8080, requests)
    lines = attack.finish(90)
    result = json.loads(lines[-1])
    assert result["opened"] == attackers and result["refused"] == 0, result
    assert result["cut"] == attackers, result
    assert result["answers"] == {answer: attackers}, result
    # Measured from the client's first bytes, so a cut also carries the accept queue and the
    # client's own polling: never before the timeout, and well before a slowloris's goal.
    assert result["cut_after_min"] >= HEADERS_TIMEOUT - 0.05, result
    assert result["cut_after_max"] <= 2 * HEADERS_TIMEOUT, result
    assert stat(client, "downstream_rq_header_timeout") == attackers
    assert stat(client, "upstream_rq_total") - upstream_before == requests
    assert during["ok"] == requests
    assert during["p99_ms"] <= 2 * baseline["p99_ms"] + 2.0, (baseline, during)
    figure(f"slowloris {protocol} connections cut", result["cut"], f"of {attackers}", answer)
    figure(
        f"slowloris {protocol} first cut", result["cut_after_min"], "s", f">= {HEADERS_TIMEOUT:g} s"
    )
    figure(
        f"slowloris {protocol} last cut",
        result["cut_after_max"],
        "s",
        f"<= {2 * HEADERS_TIMEOUT:g} s",
    )
    figure(f"slowloris {protocol} p99 baseline", baseline["p99_ms"], "ms", "")
    figure(f"slowloris {protocol} p99 during", during["p99_ms"], "ms", "<= 2x baseline + 2 ms")


def test_5_the_connection_limit_closes_the_excess_at_accept_and_counts_it(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with --max-connections 100, of 150 held connections 100 stay open and 50 are
    closed at once, counted in downstream_cx_overflow; once the held ones close, a request
    is served again."""
    client = bring_up(mesh_lab, "--max-connections", "100")
    holder = client.spawn_piped(SYSTEM_PYTHON, str(CLIENTS), "hold", VIP, "8080", "150")
    held = json.loads(holder.stdout.readline())
    assert held == {"opened": 100, "refused": 50}, held
    assert stat(client, "downstream_cx_overflow") == 50
    assert stat(client, "downstream_cx_active") == 100
    holder.stdin.close()
    holder.wait(30)
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 10, "the held ones to close")
    assert run_client(client, "latency", VIP, 8080, 10)["ok"] == 10
    figure("held / refused", 100, "/ 50", "limit 100 holds, excess counted")
