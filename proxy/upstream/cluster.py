"""A cluster at runtime: one service port's hosts with their balancer, circuit breaker, outlier
detector and active health checker — Envoy's ``outbound|PORT||FQDN`` cluster.

Clusters are rebuilt on every mesh reload, but the state that matters survives: a host whose
endpoint did not change keeps its Host object (counters, ejection, health), and the breaker
and outlier detector are carried over when their config did not change. Connections already
open keep the cluster object they started with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import replace

from proxy.config.model import (
    Endpoint,
    HttpRoute,
    Mesh,
    RetryPolicy,
    Service,
    ServicePort,
    Workload,
)
from proxy.series import Stats
from proxy.stats import Counter, Gauge, cluster_labels, labels
from proxy.upstream.breaker import CircuitBreaker
from proxy.upstream.health import HealthState
from proxy.upstream.hosts import Host, HostSet
from proxy.upstream.http2_pool import Http2Pool
from proxy.upstream.lb import make_balancer
from proxy.upstream.outlier import Ejection, OutlierDetector
from proxy.upstream.pool import UpstreamPool

# Envoy's cluster stats, labelled by cluster (the connection ones are the connector's).
# No usable endpoint: counted by the L4 relay and the request pipeline alike.
UPSTREAM_CX_NONE_HEALTHY = Counter(
    "upstream_cx_none_healthy", "Connections with no usable endpoint"
)
OUTLIER_DETECTION_EJECTIONS_TOTAL = Counter(
    "outlier_detection_ejections_total", "Endpoints ejected by outlier detection"
)
OUTLIER_DETECTION_EJECTIONS_ENFORCED = Counter(  # labelled by the run that ejected (``kind``)
    "outlier_detection_ejections_enforced_total", "Ejections by the run of errors that made them"
)
# What every worker sees of the cluster whole: one worker's view, not the sum of all of them.
MEMBERSHIP_TOTAL = Gauge("membership_total", "Endpoints in a cluster", across_workers="max")
MEMBERSHIP_HEALTHY = Gauge(  # the most pessimistic worker's view
    "membership_healthy", "Usable endpoints in a cluster", across_workers="min"
)
OUTLIER_DETECTION_EJECTIONS_ACTIVE = Gauge(
    "outlier_detection_ejections_active", "Endpoints currently ejected", across_workers="max"
)

# (service key "name.namespace", service port, subset name or "" for all endpoints)
ClusterKey = tuple[str, int, str]


def cluster_name(service: Service, port: ServicePort, cluster_domain: str, subset: str = "") -> str:
    """Istio's names: ``outbound|8080||backend.default.svc.cluster.local``, and with a subset
    ``outbound|8080|v1|backend.default.svc.cluster.local``."""
    return f"outbound|{port.port}|{subset}|{service.fqdn(cluster_domain)}"


class ClusterRuntime:
    def __init__(
        self,
        name: str,
        service: Service,
        port: ServicePort,
        stats: Stats,
        previous: ClusterRuntime | None,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.service = service
        self.port = port
        self.stats = stats
        self.clock = clock
        # Host objects (counters, ejection, health) carry over only with the outlier detector
        # that owns their ejections: a shared host ejected by a retired detector would never
        # be readmitted.
        keep = previous is not None and (
            previous.service.policy.outlier_detection == service.policy.outlier_detection
        )
        old_hosts = (
            {(h.endpoint, h.port): h for h in previous.hosts.hosts}
            if keep and previous is not None
            else {}
        )
        hosts = [
            old_hosts.get((e, e.port_for(port))) or Host(e, e.port_for(port))
            for e in service.endpoints
        ]
        self.hosts: HostSet = HostSet(hosts)
        policy = service.policy
        self.balancer = make_balancer(policy.load_balancer, rng)
        same_breaker = (
            previous is not None
            and previous.service.policy.circuit_breaker == policy.circuit_breaker
        )
        self.breaker: CircuitBreaker = (
            previous.breaker
            if same_breaker and previous is not None
            else CircuitBreaker(policy.circuit_breaker)
        )
        self.outlier = self._outlier(previous, hosts)
        self.health_task: asyncio.Task[None] | None = None
        self.built_from: Service | None = None  # the mesh's service (before a subset narrowed it)
        # HTTP: requests and retries in flight (max_requests breaker, retry budget), and the
        # keep-alive pool, made on first use (it needs the running loop).
        self.requests_active = 0
        self.retries_active = 0
        self._pool: UpstreamPool | None = None
        self._http2_pool: Http2Pool | None = None
        self.retired = False  # a reload replaced it (``retire``)

    def _outlier(
        self, previous: ClusterRuntime | None, hosts: list[Host]
    ) -> OutlierDetector | None:
        config = self.service.policy.outlier_detection
        if (
            previous is not None
            and previous.outlier is not None
            and previous.service.policy.outlier_detection == config
        ):
            previous.outlier.set_hosts(hosts)
            return previous.outlier
        return OutlierDetector(config, self.clock, hosts) if config is not None else None

    # --- the data path ------------------------------------------------------------------

    def pick(self, hash_key: bytes | None, avoid: set[Host]) -> Host | None:
        """A host for a new connection, not one in ``avoid`` (already tried) while another
        candidate exists. The balancer decides first; only a retry that lands on a tried host
        falls back to the first untried candidate, so the balancer's own state (round-robin
        position, ring) is never disturbed by retries."""
        if self.outlier is not None:
            self.outlier.sweep(self.clock())
        host = self.hosts.pick(self.balancer, hash_key)
        if host is None or host not in avoid:
            return host
        untried = [h for h in self.hosts.candidates() if h not in avoid]
        return untried[0] if untried else host

    def report_connect(self, host: Host, ok: bool, final: bool = True) -> None:
        """A connect to ``host`` ended. ``final``: the connection is the whole exchange (TCP),
        so its success ends the host's error runs; an HTTP connection's responses do that."""
        if ok:
            host.connections_total += 1
            if final and self.outlier is not None:
                self.outlier.on_success(host)
            return
        host.connect_failures_total += 1
        if self.outlier is not None:
            self._count_ejection(self.outlier.on_failure(host))

    def report_response(self, host: Host, status: int) -> None:
        """``host`` answered an HTTP request with ``status`` (outlier detection's input)."""
        if self.outlier is not None:
            self._count_ejection(self.outlier.on_response(host, status))

    def report_local_failure(self, host: Host) -> None:
        """A try on ``host`` failed after connecting: reset or closed before a response, or
        its per-try timeout (a 503 in the outlier detector's books)."""
        if self.outlier is not None:
            self._count_ejection(self.outlier.on_failure(host))

    def _count_ejection(self, kind: Ejection | None) -> None:
        if kind is not None:
            self.stats.inc(OUTLIER_DETECTION_EJECTIONS_TOTAL, cluster_labels(self.name))
            self.stats.inc(
                OUTLIER_DETECTION_EJECTIONS_ENFORCED, labels(cluster=self.name, kind=kind)
            )

    def http_pool(self, loop: asyncio.AbstractEventLoop) -> UpstreamPool:
        if self._pool is None:
            policy = self.service.policy
            self._pool = UpstreamPool(
                loop, policy.http_idle_timeout, policy.max_requests_per_connection
            )
        return self._pool

    def http2_pool(self, loop: asyncio.AbstractEventLoop) -> Http2Pool:
        """The multiplexed connections of an http2/grpc port (one per host, reused)."""
        if self._http2_pool is None:
            self._http2_pool = Http2Pool(loop, self.service.policy.http_idle_timeout)
        return self._http2_pool

    def retire(self) -> None:
        """A reload replaced this cluster: stop probing, let pooled connections go."""
        self.retired = True
        self.stop_health_checks()
        if self._pool is not None:
            self._pool.close_all()
        if self._http2_pool is not None:
            self._http2_pool.close_all()

    # --- observability ------------------------------------------------------------------

    def publish_gauges(self, stats: Stats) -> None:
        cluster = labels(cluster=self.name)
        stats.gauge_set(MEMBERSHIP_TOTAL, cluster, len(self.hosts))
        stats.gauge_set(MEMBERSHIP_HEALTHY, cluster, len(self.hosts.usable()))
        active = self.outlier.ejections_active if self.outlier is not None else 0
        stats.gauge_set(OUTLIER_DETECTION_EJECTIONS_ACTIVE, cluster, active)

    def rows(self) -> list[tuple[str, str, str, int | str]]:
        """Envoy's /clusters fields as (cluster, host, field, value) rows; workers' rows are
        merged by the supervisor (numbers add up, a failed health flag wins)."""
        rows: list[tuple[str, str, str, int | str]] = [
            (
                self.name,
                "",
                "outlier_detection_ejections_active",
                self.outlier.ejections_active if self.outlier else 0,
            ),
            (self.name, "", "max_connections", self.service.policy.circuit_breaker.max_connections),
        ]
        for host in self.hosts.hosts:
            flags = ("/failed_outlier_check" if host.ejected else "") + (
                "" if host.healthy else "/failed_active_hc"
            )
            rows += [
                (self.name, host.key, "cx_active", host.active_requests),
                (self.name, host.key, "cx_total", host.connections_total),
                (self.name, host.key, "cx_connect_fail", host.connect_failures_total),
                (self.name, host.key, "weight", host.weight),
                (self.name, host.key, "health_flags", flags or "healthy"),
            ]
        return rows

    # --- active health checks -----------------------------------------------------------

    def start_health_checks(self) -> None:
        if self.service.policy.health_check is not None and self.health_task is None:
            self.health_task = asyncio.get_running_loop().create_task(self._health_loop())

    def stop_health_checks(self) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
            self.health_task = None

    async def _health_loop(self) -> None:
        config = self.service.policy.health_check
        assert config is not None  # started only when configured
        states = {host: HealthState(config, host) for host in self.hosts.hosts}
        while True:
            results = await asyncio.gather(*(_tcp_probe(h, config.timeout) for h in states))
            for state, ok in zip(states.values(), results, strict=True):
                state.record(ok)
            await asyncio.sleep(config.interval)


async def _tcp_probe(host: Host, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.address, host.port), timeout
        )
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


def cluster_keys(service: Service) -> list[ClusterKey]:
    """The keys of ``service``'s clusters: one per port, and per port and subset."""
    subsets = ("", *(s.name for s in service.subsets))
    return [(service.key, port.port, subset) for port in service.ports for subset in subsets]


def build_clusters(
    mesh: Mesh,
    previous: dict[ClusterKey, ClusterRuntime],
    stats: Stats,
    rng: random.Random | None = None,
) -> dict[ClusterKey, ClusterRuntime]:
    """One ClusterRuntime per (service, port) and per (service, port, subset), reusing what
    ``previous`` knew. A subset cluster is the service narrowed to the subset's endpoints, with
    its own balancer, breaker and outlier detector, as Istio's subset clusters are."""
    rng = rng or random.Random()
    clusters: dict[ClusterKey, ClusterRuntime] = {}
    for service in mesh.services:
        if _unchanged(service, previous, mesh.cluster_domain):
            for port in service.ports:
                for subset in ("", *(s.name for s in service.subsets)):
                    key = (service.key, port.port, subset)
                    clusters[key] = previous[key]
            continue
        variants = [("", service)] + [
            (s.name, replace(service, endpoints=tuple(filter(s.selects, service.endpoints))))
            for s in service.subsets
        ]
        for port in service.ports:
            for subset, narrowed in variants:
                key = (service.key, port.port, subset)
                name = cluster_name(service, port, mesh.cluster_domain, subset)
                runtime = ClusterRuntime(name, narrowed, port, stats, previous.get(key), rng)
                runtime.built_from = service
                clusters[key] = runtime
    return clusters


def _unchanged(
    service: Service, previous: dict[ClusterKey, ClusterRuntime], cluster_domain: str
) -> bool:
    """Whether every cluster of ``service`` in ``previous`` was built from this very Service
    object (an xDS update keeps the objects of the services it did not touch): then they are
    kept whole, balancer, pools and health checks with them, as Envoy keeps a cluster whose
    resource did not change."""
    for port in service.ports:
        for subset in ("", *(s.name for s in service.subsets)):
            runtime = previous.get((service.key, port.port, subset))
            if (
                runtime is None
                or runtime.built_from is not service
                or runtime.name != cluster_name(service, port, cluster_domain, subset)
            ):
                return False
    return True


def inbound_service(workload: Workload, address: str, port: int) -> Service:
    """The local app behind an inbound HTTP port, as a service of one endpoint (the address the
    client dialled), with one route that never retries."""
    return Service(
        name=workload.name,
        namespace=workload.namespace,
        vips=(),
        ports=(ServicePort("http", port, "http"),),
        endpoints=(Endpoint(ipaddress.ip_address(address)),),
        http_routes=(HttpRoute(name="inbound", retries=RetryPolicy(attempts=0)),),
    )
