"""Outlier detection on what an HTTP upstream answers: 5xx and gateway-error runs eject an
endpoint, it comes back after its ejection time, and the ejection percentage holds.

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


def bring_up(lab: MeshLab, **outlier_detection: object) -> tuple[Pod, list[Pod]]:
    client = lab.add_pod("client", 10)
    backends = [lab.add_pod(name, 11 + n) for n, name in enumerate(("v1", "v2"))]
    for pod in backends:
        pod.serve_http11(8080, pod.name)
    config = http_service(backends)
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


def test_a_run_of_5xx_ejects_the_endpoint_until_its_ejection_time_ends(
    mesh_lab: MeshLab,
) -> None:
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
    assert time.monotonic() - ejected_at >= 1.9, "back before base_ejection_time"
    assert not ejected(client, v2)
    assert stat(client, "outlier_detection_ejections_active") == 0


def test_gateway_errors_have_their_own_run_and_other_5xx_do_not_count_in_it(
    mesh_lab: MeshLab,
) -> None:
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


def test_max_ejection_percent_keeps_half_the_endpoints_in_service(mesh_lab: MeshLab) -> None:
    client, backends = bring_up(
        mesh_lab, consecutive_5xx_errors=2, base_ejection_time="30s", max_ejection_percent=50
    )
    replies = answers(client, "/?status=500", 12)
    assert [status for status, _ in replies] == [500] * 12  # both fail: nothing hides it
    assert sum(ejected(client, pod) for pod in backends) == 1
    assert stat(client, "outlier_detection_ejections_total") == 1
    # The one left in service took every request after the other's ejection.
    assert len({label for _, label in replies[-8:]}) == 1
