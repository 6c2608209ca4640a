"""Mesh mTLS between two sidecars, in the lab: a client pod calls a backend pod by VIP, both
apps speak plaintext, and what crosses the bridge between the sidecars is TLS.

Each pod's sidecar has a workload certificate from the lab's CA (``detour-ca``); the client's
mesh file marks the backend's endpoint as meshed (it runs as service account "backend"), so
the client's sidecar originates mTLS and the backend's terminates it (PeerAuthentication on
the backend decides what else it accepts).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

CAPTURE = str(Path(__file__).resolve().parents[2] / "support" / "capture.py")
VIP = "10.96.0.10"
URL = f"http://{VIP}:8080"
MARKER = "plaintext-marker-7f3a"  # in the request path and echoed back in the answer
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
BACKEND_ID = "spiffe://cluster.local/ns/default/sa/backend"


def client_config(backend: Pod, tls: dict | None, meshed: bool = True, **policy: object) -> str:
    endpoint: dict = {"address": backend.ip}
    if meshed:
        endpoint["service_account"] = "backend"
    workload: dict = {"name": "client", "namespace": "default", "service_account": "client"}
    if tls is not None:
        workload["tls"] = tls
    return yaml.safe_dump(
        {
            "workload": workload,
            "services": [
                {
                    "name": "backend",
                    "vip": VIP,
                    "ports": [{"name": "http", "port": 8080, "protocol": "http"}],
                    "endpoints": [endpoint],
                    "traffic_policy": {"connect_timeout": "1s", **policy},
                    "http": [{"name": "default", "retries": {"attempts": 0}}],
                }
            ],
        }
    )


def backend_config(tls: dict, mode: str = "PERMISSIVE") -> str:
    workload = {
        "name": "backend",
        "namespace": "default",
        "service_account": "backend",
        "inbound_ports": [{"port": 8080, "protocol": "http"}],
        "tls": tls,
        "peer_authentication": {"mode": mode},
    }
    return yaml.safe_dump({"workload": workload})


def meshed_pair(lab: MeshLab, mode: str = "PERMISSIVE", client_ca: str = "ca") -> tuple[Pod, Pod]:
    """A client pod and a backend pod, both with sidecars and certificates."""
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("backend", 20)
    backend.serve_http11(8080, "backend")
    lab.intercept(backend)
    backend_tls = lab.issue_identity(backend, "backend")
    lab.start_sidecar(backend, lab.write_config("b.yaml", backend_config(backend_tls, mode)))
    lab.intercept(client)
    client_tls = lab.issue_identity(client, "client", ca=client_ca)
    lab.start_sidecar(client, lab.write_config("c.yaml", client_config(backend, client_tls)))
    return client, backend


def pair_with_a_connection_per_request(lab: MeshLab, client_ttl: str = "24h") -> tuple[Pod, Pod]:
    """A meshed client and backend whose client sidecar opens an upstream connection per
    request (``max_requests_per_connection: 1``): every request is a handshake."""
    client = lab.add_pod("client", 10)
    backend = lab.add_pod("backend", 20)
    backend.serve_http11(8080, "backend")
    lab.intercept(backend)
    backend_tls = lab.issue_identity(backend, "backend")
    lab.start_sidecar(backend, lab.write_config("b.yaml", backend_config(backend_tls)))
    lab.intercept(client)
    client_tls = lab.issue_identity(client, "client", ttl=client_ttl)
    config = client_config(backend, client_tls, max_requests_per_connection=1)
    lab.start_sidecar(client, lab.write_config("c.yaml", config))
    return client, backend


def prometheus(pod: Pod) -> list[str]:
    code, text = pod.admin("/stats/prometheus")
    assert code == 200, text
    return text.splitlines()


def requests_with(pod: Pod, *labels: str) -> float:
    """istio_requests_total summed over the series that carry every label given."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in prometheus(pod)
        if line.startswith("istio_requests_total{") and all(label in line for label in labels)
    )


class Capture:
    """What crosses the lab's bridge on a port, from a raw socket in the bridge namespace."""

    def __init__(self, lab: MeshLab, port: int) -> None:
        self.path = lab.workdir / f"capture-{port}.bin"
        argv = lab.bridge_ns.command(SYSTEM_PYTHON, CAPTURE, "br0", str(port), str(self.path))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lab.bridge_ns._procs.append(self.proc)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr

    def stop(self) -> bytes:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the capture's signal to finish
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.path.read_bytes()


@pytest.mark.vm
def test_traffic_between_meshed_pods_is_mutual_tls_on_the_wire(mesh_lab: MeshLab) -> None:
    capture = Capture(mesh_lab, 8080)
    client, backend = meshed_pair(mesh_lab)
    answers = [client.curl(f"{URL}/{MARKER}?n={n}") for n in range(5)]
    wire = capture.stop()
    for answer in answers:
        assert f'"path": "/{MARKER}' in answer, answer  # the apps see plaintext
    assert b"\x16\x03" in wire, "no TLS handshake record crossed the bridge"
    assert MARKER.encode() not in wire, "the request crossed the bridge in plaintext"
    assert b"HTTP/1.1" not in wire
    # Both ends know who the other is, and say so in Istio's labels.
    assert (
        requests_with(
            client,
            'reporter="source"',
            f'source_principal="{CLIENT_ID}"',
            f'destination_principal="{BACKEND_ID}"',
            'connection_security_policy="mutual_tls"',
        )
        == 5
    )
    assert (
        requests_with(
            backend,
            'reporter="destination"',
            f'source_principal="{CLIENT_ID}"',
            f'destination_principal="{BACKEND_ID}"',
            'connection_security_policy="mutual_tls"',
        )
        == 5
    )
    assert stat(client, "ssl_handshake") >= 1
    assert stat(backend, "downstream_ssl_handshake") >= 1


def test_a_client_with_a_certificate_of_another_root_is_refused(mesh_lab: MeshLab) -> None:
    client, backend = meshed_pair(mesh_lab, client_ca="other-ca")
    code = client.curl(f"{URL}/", "-o", "/dev/null", "-w", "%{http_code}")
    assert code.startswith("503"), code
    wait_until(lambda: stat(backend, "downstream_ssl_connection_error") >= 1, 5, "a TLS refusal")
    assert stat(backend, "downstream_rq_total") == 0  # nothing reached the app


def test_strict_refuses_plaintext_and_permissive_labels_it(mesh_lab: MeshLab) -> None:
    """A pod without a sidecar (plaintext) calls the backend: STRICT closes the connection and
    counts it; the same backend in PERMISSIVE answers it and labels it ``none``."""
    outsider = mesh_lab.add_pod("outsider", 30)
    client, backend = meshed_pair(mesh_lab, mode="STRICT")
    assert outsider.curl(f"http://{backend.ip}:8080/").startswith("ERROR")
    assert stat(backend, "downstream_cx_mtls_required") == 1
    assert '"path": "/"' in client.curl(f"{URL}/")  # mesh mTLS still gets in
    permissive = backend_config(mesh_lab.issue_identity(backend, "backend"), "PERMISSIVE")
    backend.sidecar.terminate()
    backend.sidecar.wait(10)
    mesh_lab.start_sidecar(backend, mesh_lab.write_config("b2.yaml", permissive))
    assert '"path": "/' in outsider.curl(f"http://{backend.ip}:8080/x")
    assert (
        requests_with(backend, 'connection_security_policy="none"', 'source_principal="unknown"')
        == 1
    )


def test_a_meshed_endpoint_is_not_reached_without_a_certificate(mesh_lab: MeshLab) -> None:
    """The client's sidecar has no workload certificate: it cannot prove who it is, so it does
    not fall back to plaintext (the backend would take it for an outsider)."""
    client = mesh_lab.add_pod("client", 10)
    backend = mesh_lab.add_pod("backend", 20)
    backend.serve_http11(8080, "backend")
    mesh_lab.intercept(client)
    mesh_lab.start_sidecar(client, mesh_lab.write_config("c.yaml", client_config(backend, None)))
    code = client.curl(f"{URL}/", "-o", "/dev/null", "-w", "%{http_code}")
    assert code == "503"
    assert stat(client, "upstream_cx_connect_fail") >= 1


def test_certificates_renewed_on_both_sides_fail_no_request(mesh_lab: MeshLab) -> None:
    client, backend = meshed_pair(mesh_lab)
    script = (
        "import sys, time, urllib.request\n"
        "ok = failed = 0\n"
        "end = time.monotonic() + float(sys.argv[2])\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1], timeout=5).read(); ok += 1\n"
        "    except Exception as err:\n"
        "        failed += 1; print(repr(err), file=sys.stderr)\n"
        "print(ok, failed)\n"
    )
    load = client.spawn(SYSTEM_PYTHON, "-c", script, f"{URL}/renew", "6")
    # Renew once the load is flowing (its requests show on the backend), so that requests
    # run before, across and after both renewals.
    wait_until(lambda: stat(backend, "downstream_rq_2xx") >= 5, 10, "the load to flow")
    for pod, account in ((backend, "backend"), (client, "client")):
        mesh_lab.issue_identity(pod, account)  # same files, new certificates
    out, errors = load.communicate(timeout=30)
    ok, failed = (int(n) for n in out.split())
    assert failed == 0, errors
    assert ok > 10
    for pod in (client, backend):
        wait_until(lambda pod=pod: stat(pod, "workload_cert_reload_total") == 1, 5, "a reload")


def test_new_connections_to_a_verified_peer_resume_its_tls_session(mesh_lab: MeshLab) -> None:
    """One request per upstream connection: the first is a full handshake, the next ones
    resume its session, and both ends still see each other's SPIFFE ID."""
    client, backend = pair_with_a_connection_per_request(mesh_lab)
    for _ in range(3):
        assert '"path": "/' in client.curl(f"{URL}/")
    wait_until(lambda: stat(backend, "downstream_ssl_handshake") >= 3, 5, "three handshakes")
    assert stat(client, "ssl_session_reused") >= 1
    assert stat(backend, "downstream_ssl_session_reused") >= 1
    principal = 'source_principal="spiffe://cluster.local/ns/default/sa/client"'
    assert requests_with(backend, principal, 'connection_security_policy="mutual_tls"') == 3


def test_an_expired_client_certificate_is_refused(mesh_lab: MeshLab) -> None:
    """The client's sidecar keeps presenting its certificate after it expired (a renewal that
    never came): the backend refuses the handshake and counts it."""
    # One request per upstream connection: each needs a new handshake (a pooled connection
    # made before the expiry would carry on, as TLS sessions do).
    client, backend = pair_with_a_connection_per_request(mesh_lab, client_ttl="5s")
    assert '"path": "/' in client.curl(f"{URL}/")

    def expired() -> bool:
        lines = prometheus(client)
        return any(line.startswith("istio_agent_cert_expiry_seconds -") for line in lines)

    wait_until(expired, 15, "the client's certificate to expire")
    code = client.curl(f"{URL}/", "-o", "/dev/null", "-w", "%{http_code}")
    assert code.startswith("503"), code
    wait_until(lambda: stat(backend, "downstream_ssl_connection_error") >= 1, 5, "a refusal")
