"""The mesh as the sidecar sees it: services, their ports and endpoints, traffic policy, and
the workload this sidecar serves. Frozen and validated once by the loader; the data path only
ever reads it. Field names follow Istio's (ServiceEntry / DestinationRule / Sidecar) where one
exists, so an operator can map one onto the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from proxy.policy.model import AuthorizationPolicy
from proxy.policy.paths import EscapedSlashes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Protocol = Literal["auto", "tcp", "http", "http2", "grpc", "tls"]
LbPolicy = Literal["round_robin", "least_request", "random", "ring_hash"]
OutboundPolicy = Literal["ALLOW_ANY", "REGISTRY_ONLY"]
PeerAuthenticationMode = Literal["PERMISSIVE", "STRICT", "DISABLE"]

# "auto": sniff the first bytes (HTTP/1.x → the HTTP router, anything else → TCP), as Istio does
# for ports whose protocol is not declared.
PROTOCOLS: tuple[str, ...] = ("auto", "tcp", "http", "http2", "grpc", "tls")
StringMatchKind = Literal["exact", "prefix", "regex"]
STRING_MATCH_KINDS: tuple[str, ...] = ("exact", "prefix", "regex")
# Envoy's retry_on conditions that an HTTP/1.1 router can observe (x-envoy-retry-on names),
# then the gRPC statuses a gRPC call may be retried on (x-envoy-retry-grpc-on names; Istio
# takes both in one retryOn list).
RETRY_ON: tuple[str, ...] = (
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
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
    # A meshed endpoint (Istio's tlsMode: istio): a sidecar runs next to it as this service
    # account of the service's namespace, reached over mesh mTLS; None: plaintext.
    service_account: str | None = None

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
    max_requests: int = 1024  # HTTP requests in flight to the cluster (503 UO beyond)
    # Retry budget (Envoy's RetryBudget): retries in flight may be at most this share of the
    # requests in flight, but never fewer than min_retry_concurrency. Retries beyond it are
    # not made (upstream_rq_retry_overflow): under overload, retries must not multiply load.
    retry_budget_percent: float = 20.0
    min_retry_concurrency: int = 3


# Envoy's max_ejection_time default: however often a host is ejected, it is retried this often.
MAX_EJECTION_TIME = 300.0


@dataclass(frozen=True)
class OutlierDetection:
    """Consecutive errors eject an endpoint for base_ejection_time x times ejected: 5xx
    responses and failures of the sidecar's own (connect, reset, per-try timeout), or only
    gateway errors (502, 503, 504 and those failures). 0 turns a run off (Istio's
    ``consecutive5xxErrors`` and ``consecutiveGatewayErrors``; the latter is off unless set)."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
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
    # HTTP upstream connection pool (Istio's connectionPool.http): an idle keep-alive
    # connection is closed after http_idle_timeout; 0 requests per connection = unlimited.
    http_idle_timeout: float = 3600.0
    max_requests_per_connection: int = 0


# --- HTTP routing (Istio's VirtualService http section, per service) --------------------------


@dataclass(frozen=True)
class StringMatch:
    """Istio's StringMatch: exactly one of exact / prefix / regex (RE2-like, full match)."""

    kind: StringMatchKind
    value: str


@dataclass(frozen=True)
class RouteMatch:
    """All given conditions must hold (AND); a route's list of matches is OR'ed. Header names
    are lowercase; ``uri`` applies to the path without the query string."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True)
class RouteDestination:
    """A share of a route's traffic, sent to the service's endpoints in ``subset`` (all of them
    when None). Weights of one route add up to 100 (or there is a single destination)."""

    subset: str | None = None
    weight: int = 100


@dataclass(frozen=True)
class RetryPolicy:
    """Istio's HTTPRetry with its defaults: 2 retries on connect failures and 503s.

    ``attempts`` counts retries (not the first try). Back-off between tries is Envoy's:
    full jitter over base * 2^n, capped at ``backoff_max``.
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ("connect-failure", "retriable-status-codes")
    retriable_status_codes: tuple[int, ...] = (503,)
    backoff_base: float = 0.025
    backoff_max: float = 0.25


@dataclass(frozen=True)
class HeaderOperations:
    """Istio's Headers.HeaderOperations: set replaces, add appends, remove deletes (names are
    lowercase)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fault:
    """Fault injection for chaos testing (Istio's HTTPFaultInjection): each request is delayed
    with probability delay_percent and/or aborted with abort_status with abort_percent."""

    delay_percent: float = 0.0
    delay: float = 0.0
    abort_percent: float = 0.0
    abort_status: int = 503


@dataclass(frozen=True)
class HttpRoute:
    """One rule of a service's HTTP routing table; the first whose matches hold wins.

    ``timeout`` is the whole request's budget, retries included (504 + UT when it fires);
    None means no route timeout (Istio's default), the stream idle timeout still applies.
    """

    name: str
    matches: tuple[RouteMatch, ...] = ()  # empty: matches every request
    destinations: tuple[RouteDestination, ...] = (RouteDestination(),)
    timeout: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    request_headers: HeaderOperations = field(default_factory=HeaderOperations)
    response_headers: HeaderOperations = field(default_factory=HeaderOperations)
    fault: Fault | None = None


@dataclass(frozen=True)
class Subset:
    """Istio's DestinationRule subset: the endpoints whose labels include all of ``labels``."""

    name: str
    labels: tuple[tuple[str, str], ...]

    def selects(self, endpoint: Endpoint) -> bool:
        return all(pair in endpoint.labels for pair in self.labels)


DEFAULT_HTTP_ROUTE = HttpRoute(name="default")


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    vips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    subsets: tuple[Subset, ...] = ()
    # Applies to the service's http (and sniffed-HTTP auto) ports; when empty, one default
    # route sends everything to all endpoints with the default retry policy.
    http_routes: tuple[HttpRoute, ...] = ()

    @property
    def routes(self) -> tuple[HttpRoute, ...]:
        return self.http_routes or (DEFAULT_HTTP_ROUTE,)

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    @property
    def key(self) -> str:
        """``name.namespace``: unique in a mesh, and the cluster's name."""
        return f"{self.name}.{self.namespace}"

    def fqdn(self, cluster_domain: str) -> str:
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True)
class PeerAuthentication:
    """Istio's PeerAuthentication for this workload: what inbound connections must be.

    PERMISSIVE: mesh mTLS and plaintext both accepted (and labelled); STRICT: plaintext is
    closed and counted; DISABLE: mesh TLS is not terminated (relayed to the app as it is).
    ``port_modes`` overrides the mode per inbound port."""

    mode: PeerAuthenticationMode = "PERMISSIVE"
    port_modes: tuple[tuple[int, PeerAuthenticationMode], ...] = ()

    def mode_for(self, port: int) -> PeerAuthenticationMode:
        return dict(self.port_modes).get(port, self.mode)


@dataclass(frozen=True)
class WorkloadTls:
    """Where the workload's certificate, key and the mesh root are (Istio's /etc/certs)."""

    cert_chain: str = "/etc/certs/cert-chain.pem"
    private_key: str = "/etc/certs/key.pem"
    root_cert: str = "/etc/certs/root-cert.pem"


@dataclass(frozen=True)
class Workload:
    """The workload this sidecar serves: its identity for metrics and mTLS, and its inbound
    ports."""

    name: str = "unknown"
    namespace: str = "default"
    inbound_ports: tuple[int, ...] = ()
    # Inbound ports served as HTTP ("http") or sniffed ("auto"); every other port is TCP.
    inbound_protocols: tuple[tuple[int, str], ...] = ()
    service_account: str = "default"
    # The workload's certificate files: None, no identity (mesh traffic is plaintext).
    tls: WorkloadTls | None = None
    peer_authentication: PeerAuthentication = field(default_factory=PeerAuthentication)
    # Who may call this workload (proxy.policy), checked by its inbound side.
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    # What inbound HTTP paths with %2F / %5C become before routing and policy.
    escaped_slashes: EscapedSlashes = EscapedSlashes.REJECT_REQUEST

    def inbound_protocol(self, port: int) -> str:
        return dict(self.inbound_protocols).get(port, "tcp")


@dataclass(frozen=True)
class Mesh:
    services: tuple[Service, ...] = ()
    workload: Workload = field(default_factory=Workload)
    outbound_traffic_policy: OutboundPolicy = "ALLOW_ANY"
    cluster_domain: str = "cluster.local"
    trust_domain: str = "cluster.local"  # of every SPIFFE ID in the mesh
    source: str = "<defaults>"  # the file it was loaded from, for logs and /config_dump

    def service(self, key: str) -> Service | None:
        return next((s for s in self.services if s.key == key), None)
