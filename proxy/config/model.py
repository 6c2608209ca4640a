"""The mesh as the sidecar sees it: services, their ports and endpoints, traffic policy, and
the workload this sidecar serves. Frozen and validated once by the loader; the data path only
ever reads it. Field names follow Istio's (ServiceEntry / DestinationRule / Sidecar) where one
exists, so an operator can map one onto the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Protocol = Literal["tcp", "http", "http2", "grpc", "tls"]
LbPolicy = Literal["round_robin", "least_request", "random", "ring_hash"]
OutboundPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]

PROTOCOLS: tuple[str, ...] = ("tcp", "http", "http2", "grpc", "tls")
LB_POLICIES: tuple[str, ...] = ("round_robin", "least_request", "random", "ring_hash")
# Reserved ranges for auto-allocated virtual IPs (Istio's auto-allocation uses 240.240/16 too).
DEFAULT_VIP_RANGE_V4 = ipaddress.ip_network("240.240.0.0/16")
DEFAULT_VIP_RANGE_V6 = ipaddress.ip_network("fd00:240::/112")  # a ULA range


@dataclass(frozen=True)
class Endpoint:
    """One backend address of a service. ``ports`` maps a service port name to the endpoint's
    own port when it differs from the service port's ``target_port``."""

    address: IPAddress
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()

    def port_for(self, service_port: ServicePort) -> int:
        return dict(self.ports).get(service_port.name, service_port.target_port)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol = "tcp"
    target_port: int = 0  # the loader sets it to ``port`` when absent

    def __post_init__(self) -> None:
        if not self.target_port:
            object.__setattr__(self, "target_port", self.port)


@dataclass(frozen=True)
class LoadBalancer:
    policy: LbPolicy = "round_robin"
    # ring_hash only: minimum virtual nodes on the ring (Envoy's minimum_ring_size default).
    ring_size: int = 1024
    # least_request only: how many random endpoints to compare (power of two choices).
    choice_count: int = 2


@dataclass(frozen=True)
class CircuitBreaker:
    """Envoy's cluster circuit breaker thresholds (its defaults)."""

    max_connections: int = 1024
    max_pending: int = 1024  # connections waiting for their upstream connect to finish


@dataclass(frozen=True)
class OutlierDetection:
    """Consecutive connect failures eject an endpoint for base_ejection_time x times ejected."""

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class HealthCheck:
    """Active TCP health check: connect every ``interval``; thresholds flip the state."""

    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    connect_attempts: int = 2  # a failed connect is retried once on another endpoint
    circuit_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    vips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)

    @property
    def key(self) -> str:
        """``name.namespace``: unique in a mesh, and the cluster's name."""
        return f"{self.name}.{self.namespace}"

    def fqdn(self, cluster_domain: str) -> str:
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True)
class Workload:
    """The workload this sidecar serves: its identity for metrics and its inbound ports."""

    name: str = "unknown"
    namespace: str = "default"
    inbound_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Mesh:
    services: tuple[Service, ...] = ()
    workload: Workload = field(default_factory=Workload)
    outbound_traffic_policy: OutboundPolicy = "ALLOW_ANY"
    cluster_domain: str = "cluster.local"
    source: str = "<defaults>"  # the file it was loaded from, for logs and /config_dump

    def service(self, key: str) -> Service | None:
        return next((s for s in self.services if s.key == key), None)
