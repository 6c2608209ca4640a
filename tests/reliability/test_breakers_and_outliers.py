"""Issue 19, case 9: circuit breakers and outlier detection do what their config says.

Outlier detection on what an HTTP upstream answers: 5xx and gateway-error runs eject an
endpoint, it comes back after its ejection time, and the ejection percentage holds; requests
over a circuit breaker's max_requests are refused 503 UO. (A TCP connection over
max_connections: tests/e2e/proxy/test_mesh_routing.py.)

Two backends (tests/support/http_peers.py) behind one HTTP service, round robin; a request's
``status_of=LABEL:N`` makes only the backend labelled LABEL answer N, so one URL has one
failing endpoint. 500 and 502 are not retried by the default retry policy (503 is), so the
client sees each failing answer and the test can count them.
"""

from __future__ import annotations

import time
from collections import Counter

import yaml
from support.h2_mesh import prometheus_sum
from support.http_mesh import URL, http_service
from support.lab import wait_until
from support.mesh_lab import MeshLab, Pod, stat

from .conftest import Figure


def bring_up(lab: MeshLab, **outlier_detection: object) -> tuple[Pod, list[Pod]]:
    client = lab.add_pod("client", 10)
    backends = [lab.add_pod(name, 11 + n) for n, name in enumerate(("v1", "v2"))]
    for pod in backends:
        pod.serve_http11(8080, pod.name)
    config = http_service(backends)
    if outlier_detection:
        config["services"][0]["traffic_policy"]["outlier_detection"] = outlier_detection
    lab.intercept(client)
    lab.start_sidecar(client, lab.write_config("mesh.yaml", yaml.safe_dump(config)))
    return client, backends


def answers(client: Pod, path: str, count: int) -> list[tuple[int, str]]:
    """(status, backend label) of ``count`` requests on one keep-alive connection."""
    return [(r["status"], r["label"]) for r in client.http_client(URL + path, count)]


def ejected(client: Pod, backend: Pod) -> bool:
    _, clusters = client.admin("/clusters")
    return f"{backend.ip}:8080::health_flags::/failed_outlier_check" in clusters


def test_9_a_run_of_5xx_ejects_the_endpoint_until_its_ejection_time_ends(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with consecutive_5xx_errors 3, the failing endpoint answers exactly 3 requests
    (500) and none after them, is flagged failed_outlier_check and counted; it serves again
    after base_ejection_time (2 s), not before."""
    client, (_v1, v2) = bring_up(
        mesh_lab, consecutive_5xx_errors=3, base_ejection_time="2s", max_ejection_percent=50
    )
    replies = answers(client, "/?status_of=v2:500", 20)
    ejected_at = time.monotonic()
    # Round robin: v2 answers every other request until its third 500, then is out.
    assert Counter(replies) == {(500, "v2"): 3, (200, "v1"): 17}
    assert replies[-14:] == [(200, "v1")] * 14
    assert ejected(client, v2)
    assert (
        prometheus_sum(
            client, "outlier_detection_ejections_enforced_total", 'kind="consecutive_5xx"'
        )
        == 1
    )
    assert stat(client, "outlier_detection_ejections_active") == 1

    def v2_serves_again() -> bool:
        return (200, "v2") in answers(client, "/", 2)

    wait_until(v2_serves_again, 10, "v2 back after its ejection time")
    back_after = time.monotonic() - ejected_at
    assert back_after >= 1.9, "back before base_ejection_time"
    assert not ejected(client, v2)
    assert stat(client, "outlier_detection_ejections_active") == 0
    figure("500s answered before ejection", Counter(replies)[(500, "v2")], "of 20", "3")
    figure("back in service after", round(back_after, 2), "s", ">= base_ejection_time 2 s")


def test_9_gateway_errors_have_their_own_run_and_other_5xx_do_not_count_in_it(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with only consecutive_gateway_errors 2, five 500s eject nothing; two 502s eject
    the endpoint (counted as consecutive_gateway_failure) and it answers nothing after."""
    client, (_v1, v2) = bring_up(
        mesh_lab,
        consecutive_5xx_errors=0,  # off: only gateway errors eject
        consecutive_gateway_errors=2,
        base_ejection_time="30s",
    )
    replies = answers(client, "/?status_of=v2:500", 10)
    assert Counter(replies) == {(500, "v2"): 5, (200, "v1"): 5}
    assert not ejected(client, v2)
    replies = answers(client, "/?status_of=v2:502", 10)
    assert Counter(replies) == {(502, "v2"): 2, (200, "v1"): 8}
    assert ejected(client, v2)
    assert (
        prometheus_sum(
            client,
            "outlier_detection_ejections_enforced_total",
            'kind="consecutive_gateway_failure"',
        )
        == 1
    )
    figure("502s answered before ejection", Counter(replies)[(502, "v2")], "of 10", "2")


def test_9_max_ejection_percent_keeps_half_the_endpoints_in_service(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: both endpoints fail, max_ejection_percent 50: exactly one is ejected, and the
    other takes every request after that (the client sees every 500)."""
    client, backends = bring_up(
        mesh_lab, consecutive_5xx_errors=2, base_ejection_time="30s", max_ejection_percent=50
    )
    replies = answers(client, "/?status=500", 12)
    assert [status for status, _ in replies] == [500] * 12  # both fail: nothing hides it
    ejections = sum(ejected(client, pod) for pod in backends)
    assert ejections == 1
    assert stat(client, "outlier_detection_ejections_total") == 1
    # The one left in service took every request after the other's ejection.
    assert len({label for _, label in replies[-8:]}) == 1
    figure("ejected at max_ejection_percent 50", ejections, "of 2 failing", "1")


def test_9_requests_over_the_circuit_breaker_get_503_uo(mesh_lab: MeshLab, figure: Figure) -> None:
    """Pass: with max_requests 2 and 6 slow requests at once, 2 are served and 4 refused 503
    with the flag UO in the access log, counted in upstream_rq_pending_overflow."""
    client, backends = bring_up(mesh_lab)
    config = http_service(backends)
    config["services"][0]["traffic_policy"]["circuit_breaker"] = {"max_requests": 2}
    mesh_lab.write_config("mesh.yaml", yaml.safe_dump(config))  # reloaded in place
    wait_until(lambda: stat(client, "config_reload_total") >= 1, 10, "the reload")
    replies = client.http_client(URL + "/?delay=0.5", 6, "--parallel", "6")
    statuses = sorted(r["status"] for r in replies)
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    assert stat(client, "upstream_rq_pending_overflow") == 4
    wait_until(lambda: client.read_sidecar_log().count(" 503 UO ") == 4, 5, "4 UO log lines")
    figure("refused 503 UO at max_requests 2", statuses.count(503), "of 6", "4, counted")
