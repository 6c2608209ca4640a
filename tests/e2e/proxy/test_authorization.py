"""Authorization policy on the inbound side, in the lab: a backend pod whose workload says who
may call it, a meshed client pod (mTLS: its sidecar proves "sa/client"), and an outsider pod
with no sidecar at all, calling the backend directly in plaintext (PERMISSIVE lets it in, the
policy then decides).

The backend's pair of policies, on two paths: a DENY on ``/admin`` (and below), and an ALLOW
for the client's principal on ``/public/*`` and ``/admin/*``: the DENY wins for ``/admin/*``,
and anything else is denied because an ALLOW policy exists. The bypass attempts are Istio's
advisories: a path that reaches ``/admin`` once the app decodes or resolves it (CVE-2021-31920:
``%2F``, ``%5C``, ``..``, backslashes) or once a fragment is cut (CVE-2021-39156).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support.h2_mesh import H2_PEERS, start_venv_peer
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

RAW = str(Path(__file__).resolve().parents[2] / "support" / "raw_exchange.py")
VIP = "10.96.0.10"
CLIENT = "cluster.local/ns/default/sa/client"
DENIED = "RBAC: access denied"

POLICIES = [
    {
        "name": "deny-admin",
        "action": "DENY",
        # On port 8080 only: over TCP a DENY rule's HTTP fields are left out (Istio's rule),
        # so without the port it would close every TCP connection to the workload.
        "rules": [{"to": [{"operation": {"ports": ["8080"], "paths": ["/admin", "/admin/*"]}}]}],
    },
    {
        "name": "client-public",
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": [CLIENT]}}],
                "to": [{"operation": {"paths": ["/public/*", "/admin/*"]}}],
            },
            {
                "from": [{"source": {"principals": [CLIENT]}}],
                "to": [{"operation": {"ports": ["9000"]}}],
            },
        ],
    },
]

# Targets that must end up denied (403) or refused (400), however the app would read them.
DENIED_TARGETS = [
    "/admin",
    "/admin/x",
    "/other",  # no ALLOW rule matches: default deny once an ALLOW policy exists
    "/public/../admin/x",
    "/public/./../admin",
    "//admin/x",
    "/public/%2e%2e/admin/x",
    "/%61dmin/x",
]
REFUSED_TARGETS = ["/public%2F..%2Fadmin/x", "/public%5c..%5cadmin/x"]  # escaped slashes: 400
RAW_DENIED_TARGETS = ["/public\\..\\admin/x", "/admin?/public/x"]
# A fragment has no place in a request (RFC 9112 §3.2): the client's own sidecar refuses it
# (as Envoy does by default since CVE-2021-39156); the backend would cut it off.
RAW_REFUSED_TARGETS = ["/admin#/public/x"]


def backend_config(tls: dict) -> str:
    workload = {
        "name": "backend",
        "namespace": "default",
        "service_account": "backend",
        "inbound_ports": [{"port": 8080, "protocol": "http"}, 9000],
        "tls": tls,
        "peer_authentication": {"mode": "PERMISSIVE"},
        "authorization_policies": POLICIES,
    }
    return yaml.safe_dump({"workload": workload})


def client_config(backend: Pod, tls: dict, protocol: str) -> str:
    workload = {"name": "client", "namespace": "default", "service_account": "client", "tls": tls}
    service = {
        "name": "backend",
        "vip": VIP,
        "ports": [
            {"name": "web", "port": 8080, "protocol": protocol},
            {"name": "echo", "port": 9000, "protocol": "tcp"},
        ],
        "endpoints": [{"address": backend.ip, "service_account": "backend"}],
        "traffic_policy": {"connect_timeout": "1s"},
        "http": [{"name": "default", "retries": {"attempts": 0}}],
    }
    return yaml.safe_dump({"workload": workload, "services": [service]})


def guarded_pair(lab: MeshLab, protocol: str) -> tuple[Pod, Pod]:
    """A meshed client and the backend with the policies; the backend's app speaks HTTP/1.1,
    or HTTP/2 when ``protocol`` is http2, on 8080, and echoes TCP on 9000."""
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("backend", 20)
    if protocol == "http2":
        start_venv_peer(backend, H2_PEERS, "serve", "8080", "backend")
    else:
        backend.serve_http11(8080, "backend")
    backend.serve_peer("echo", "9000")
    lab.intercept(backend)
    backend_tls = lab.issue_identity(backend, "backend")
    lab.start_sidecar(backend, lab.write_config("b.yaml", backend_config(backend_tls)))
    lab.intercept(client)
    client_tls = lab.issue_identity(client, "client")
    lab.start_sidecar(
        client, lab.write_config("c.yaml", client_config(backend, client_tls, protocol))
    )
    return client, backend


def status_and_body(pod: Pod, url: str, *extra: str) -> tuple[int, str]:
    reply = pod.curl(url, "--path-as-is", "-w", "\n%{http_code}", *extra)
    assert not reply.startswith("ERROR"), reply
    body, _, code = reply.rpartition("\n")
    return int(code), body


def raw(pod: Pod, host: str, port: int, payload: bytes, *extra: str) -> dict:
    done = pod.run(SYSTEM_PYTHON, RAW, host, str(port), payload.hex(), "5", *extra, timeout=15)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def raw_get(pod: Pod, target: str) -> tuple[int, str]:
    """A GET of ``target`` written byte for byte, through the client's sidecar."""
    request = f"GET {target} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
    answer = raw(pod, VIP, 8080, request.encode("latin-1"))
    assert answer["error"] is None, answer
    head, _, body = answer["received"].partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


def prometheus_value(pod: Pod, metric: str, *labels: str) -> float:
    code, text = pod.admin("/stats/prometheus")
    assert code == 200, text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") and all(label in line for label in labels)
    )


@pytest.mark.vm
def test_an_allow_and_a_deny_on_two_paths_hold_over_http11(mesh_lab: MeshLab) -> None:
    client, backend = guarded_pair(mesh_lab, "http")
    url = f"http://{VIP}:8080"
    code, body = status_and_body(client, f"{url}/public/./a//b?x=1")
    assert code == 200, body
    assert json.loads(body)["path"] == "/public/a/b?x=1"  # the app gets the normalised path
    for target in DENIED_TARGETS:
        assert status_and_body(client, url + target) == (403, DENIED), target
    for target in REFUSED_TARGETS:
        assert status_and_body(client, url + target)[0] == 400, target
    for target in RAW_DENIED_TARGETS:
        assert raw_get(client, target) == (403, DENIED), target
    for target in RAW_REFUSED_TARGETS:
        assert raw_get(client, target)[0] == 400, target
    denied = len(DENIED_TARGETS) + len(RAW_DENIED_TARGETS)
    # What the backend's operator sees: Istio's metric with the 403s, the RBAC counter, and
    # the access log's flag; the client's side reports the 403s its calls got.
    assert (
        prometheus_value(
            backend, "istio_requests_total", 'reporter="destination"', 'response_code="403"'
        )
        == denied
    )
    assert prometheus_value(backend, "rbac_denied_total", 'protocol="http"') == denied
    assert prometheus_value(backend, "rbac_allowed_total", 'protocol="http"') == 1
    assert (
        prometheus_value(client, "istio_requests_total", 'reporter="source"', 'response_code="403"')
        == denied
    )
    wait_until(
        lambda: '"GET /admin/x HTTP/1.1" 403 RBAC' in backend.read_sidecar_log(),
        5,
        "the backend's access log line for a denied request",
    )


def test_an_allow_and_a_deny_on_two_paths_hold_over_http2(mesh_lab: MeshLab) -> None:
    client, backend = guarded_pair(mesh_lab, "http2")
    url = f"http://{VIP}:8080"
    h2 = ("--http2-prior-knowledge",)
    code, body = status_and_body(client, f"{url}/public/./a//b", *h2)
    assert code == 200, body
    answer = json.loads(body)
    assert answer["path"] == "/public/a/b"
    for target in DENIED_TARGETS:
        assert status_and_body(client, url + target, *h2) == (403, DENIED), target
    for target in REFUSED_TARGETS:
        assert status_and_body(client, url + target, *h2)[0] == 400, target
    # The backend served them as HTTP/2 requests, one by one, over the mesh connection.
    assert prometheus_value(backend, "rbac_denied_total", 'protocol="http"') == len(DENIED_TARGETS)
    assert stat(backend, "downstream_cx_http2_total") >= 1


def test_the_policy_sees_who_calls_a_plaintext_caller_and_tcp_connections(
    mesh_lab: MeshLab,
) -> None:
    client, backend = guarded_pair(mesh_lab, "http")
    outsider = mesh_lab.add_pod("outsider", 30)  # no sidecar, no certificate
    # Plaintext is let in by PERMISSIVE, but it proves no principal: no ALLOW rule matches.
    assert status_and_body(outsider, f"http://{backend.ip}:8080/public/x") == (403, DENIED)
    assert status_and_body(client, f"http://{VIP}:8080/public/x")[0] == 200
    # TCP: the client's principal is allowed on 9000; the outsider's connection is closed at
    # once, nothing reaches the app (no echo).
    echoed = raw(client, VIP, 9000, b"ping\n", "--until", "5")
    assert echoed == {"received": "ping\n", "error": None}
    refused = raw(outsider, backend.ip, 9000, b"ping\n", "--until", "5")
    assert refused["received"] == "", refused
    assert prometheus_value(backend, "rbac_denied_total", 'protocol="tcp"') == 1
    assert prometheus_value(backend, "rbac_allowed_total", 'protocol="tcp"') == 1
    wait_until(
        lambda: "closed: rbac_access_denied_matched_policy[none]" in backend.read_sidecar_log(),
        5,
        "the backend's log line naming the denial",
    )
