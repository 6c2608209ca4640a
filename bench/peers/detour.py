"""Detour's own sidecar in the modes the benchmark compares: L4 passthrough (no config:
ALLOW_ANY to the original destination), L4 mesh service (a VIP routed to a cluster with load
balancing, circuit breaker, outlier detection and Istio metrics), and the HTTP router
(``protocol: http`` on the service port), once the sidecar has one.

Runs as uid 1337 with ``--concurrency 1`` so it is compared with the single-threaded peers
(``--sidecar-arg`` changes that), its access log on (its default), to a file.
"""

from __future__ import annotations

from typing import Literal

import yaml

from bench.peers import Launch

PROXY_UID = 1337
# As Istio configures its sidecars (and the Envoy rows here): the breaker never trips in a
# benchmark; its default of 1,024 connections would refuse the memory step.
UNLIMITED = 2**32 - 1
Mode = Literal["passthrough", "mesh", "http"]


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
                "traffic_policy": {
                    "load_balancer": "round_robin",
                    "connect_timeout": "1s",
                    "circuit_breaker": {"max_connections": UNLIMITED, "max_pending": UNLIMITED},
                },
            }
        ],
    }
    return yaml.safe_dump(mesh, sort_keys=False)


def launch(
    binary: str,
    mode: Mode,
    extra: tuple[str, ...] = (),
    mesh: str | None = None,
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
    )
