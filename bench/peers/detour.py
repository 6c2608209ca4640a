"""Detour's own sidecar in the modes the benchmark compares: L4 passthrough (no config:
ALLOW_ANY to the original destination), L4 mesh service (a VIP routed to a cluster with load
balancing, circuit breaker, outlier detection and Istio metrics), and the HTTP router
(``protocol: http`` on the service port), once the sidecar has one; and the two ends of a
mesh mTLS pair (``render_mtls_client``, ``render_mtls_server``).

Runs as uid 1337 with ``--concurrency 1`` so it is compared with the single-threaded peers
(``--sidecar-arg`` changes that), its access log on (its default), to a file.
"""

from __future__ import annotations

from typing import Literal

import yaml

from bench.peers import Launch
from bench.peers.mtls import CLIENT_ACCOUNT, NAMESPACE, SERVER_ACCOUNT, TRUST_DOMAIN, MtlsPlan

PROXY_UID = 1337
# As Istio configures its sidecars (and the Envoy rows here): the breaker never trips in a
# benchmark; its default of 1,024 connections would refuse the memory step.
UNLIMITED = 2**32 - 1
Mode = Literal["passthrough", "mesh", "http", "mtls-http", "mtls-tcp", "mtls-server"]
# The sidecar's counters of mesh mTLS handshakes (admin /stats, "name.labels: value" lines).
CLIENT_HANDSHAKES = r"^ssl_handshake(\.|$)"
SERVER_HANDSHAKES = r"^downstream_ssl_handshake(\.|$)"
RESUMED = r"^(downstream_)?ssl_session_reused(\.|$)"


def render_mesh(vip: str, endpoint: str, ports: dict[str, int], protocol: str) -> str:
    """The mesh file: one service ``backend`` at ``vip`` whose only endpoint is the origin.
    ``ports`` maps port names to numbers; the HTTP port gets ``protocol``, the others tcp."""
    service_ports = [
        {"name": name, "port": port, "protocol": protocol if name == "http" else "tcp"}
        for name, port in ports.items()
    ]
    mesh = {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": [vip],
                "ports": service_ports,
                "endpoints": [{"address": endpoint}],
                "traffic_policy": _traffic_policy(),
            }
        ],
    }
    return yaml.safe_dump(mesh, sort_keys=False)


def _traffic_policy() -> dict:
    """Every bench service's: round robin, and a breaker that never trips (see UNLIMITED)."""
    return {
        "load_balancer": "round_robin",
        "connect_timeout": "1s",
        "circuit_breaker": {"max_connections": UNLIMITED, "max_pending": UNLIMITED},
    }


def render_mtls_client(plan: MtlsPlan) -> str:
    """The client pod's mesh file: service ``backend`` at the VIP, its one endpoint the server
    pod, meshed (``service_account: backend``), so the sidecar originates mTLS with the client
    certificate and keeps the connection only if the peer is the backend's SPIFFE ID. The
    service port is ``plan.inner``: HTTP/1.1 (pooled upstream) or opaque TCP."""
    mesh = {
        "mesh": {"trust_domain": TRUST_DOMAIN},
        "workload": {
            "name": "client",
            "namespace": NAMESPACE,
            "service_account": CLIENT_ACCOUNT,
            "tls": plan.client_tls.as_detour(),
        },
        "services": [
            {
                "name": "backend",
                "namespace": NAMESPACE,
                "vip": [plan.vip],
                "ports": [{"name": "http", "port": plan.port, "protocol": plan.inner}],
                "endpoints": [{"address": plan.server_ip, "service_account": SERVER_ACCOUNT}],
                "traffic_policy": _traffic_policy(),
            }
        ],
    }
    return yaml.safe_dump(mesh, sort_keys=False)


def render_mtls_server(plan: MtlsPlan) -> str:
    """The server pod's mesh file: it serves ``plan.port`` (HTTP or TCP, as the client calls
    it) and takes only mesh mTLS there (STRICT, as Istio's PeerAuthentication for a meshed
    namespace says), with the backend certificate; plaintext to the app."""
    mesh = {
        "mesh": {"trust_domain": TRUST_DOMAIN},
        "workload": {
            "name": "backend",
            "namespace": NAMESPACE,
            "service_account": SERVER_ACCOUNT,
            "inbound_ports": [{"port": plan.port, "protocol": plan.inner}],
            "tls": plan.server_tls.as_detour(),
            "peer_authentication": {"mode": "STRICT"},
        },
    }
    return yaml.safe_dump(mesh, sort_keys=False)


def launch(
    binary: str,
    mode: Mode,
    extra: tuple[str, ...] = (),
    mesh: str | None = None,
    env: tuple[tuple[str, str], ...] = (),
) -> Launch:
    argv = [binary, "--drain-timeout", "5", "--concurrency", "1"]
    if mode != "passthrough":
        argv += ["--config", "{workdir}/mesh.yaml"]
    argv += list(extra)  # later flags win (argparse), so --concurrency 2 here overrides
    return Launch(
        argv=tuple(argv),
        uid=PROXY_UID,
        config=mesh,
        config_name="mesh.yaml",
        env=env,
    )
