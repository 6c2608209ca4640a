"""CDS and EDS: an Envoy Cluster and its ClusterLoadAssignment as Detour sees them. Pure.

Detour's model is Istio's (a service with ports, subsets and one traffic policy), so a cluster
must be named the way istiod names them, ``outbound|PORT|SUBSET|NAME.NAMESPACE.svc.DOMAIN``:
that name is what maps it back onto a service port and subset. Istio's ``PassthroughCluster``
and ``BlackHoleCluster`` are the outbound traffic policy (ALLOW_ANY, REGISTRY_ONLY).

Defaults are Envoy's, not the mesh file's, so that a snapshot behaves the same in both
(connect timeout 5 s, max_retries 3 in flight, no retry budget).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from detour_common.spiffe import SpiffeId
from proxy.config.model import (
    MAX_EJECTION_TIME,
    CircuitBreaker,
    HealthCheck,
    IPAddress,
    LbPolicy,
    LoadBalancer,
    OutlierDetection,
    TrafficPolicy,
)
from proxy.xds.mesh_tls import endpoint_is_meshed, mesh_peer
from proxy.xds.resources import only_fields, refuse, seconds, unpack

PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
SPECIAL_CLUSTERS = (PASSTHROUGH, BLACKHOLE)
ENVOY_CONNECT_TIMEOUT = 5.0
HTTP_OPTIONS_EXTENSION = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_Cluster = cluster_pb2.Cluster
_LB_POLICIES: dict[int, LbPolicy] = {
    _Cluster.ROUND_ROBIN: "round_robin",
    _Cluster.LEAST_REQUEST: "least_request",
    _Cluster.RANDOM: "random",
    _Cluster.RING_HASH: "ring_hash",
}
_CLUSTER_FIELDS = (
    "name",
    "type",
    "eds_cluster_config",
    "connect_timeout",
    "lb_policy",
    "least_request_lb_config",
    "ring_hash_lb_config",
    "load_assignment",
    "circuit_breakers",
    "outlier_detection",
    "health_checks",
    "common_http_protocol_options",
    "http2_protocol_options",
    "typed_extension_protocol_options",
    "transport_socket",  # refused with its reason (mesh_tls.py)
    "transport_socket_matches",
)
_CLUSTER_IGNORED = ("alt_stat_name", "metadata")


@dataclass(frozen=True)
class ClusterName:
    """Istio's ``outbound|port|subset|host`` split into its parts."""

    port: int
    subset: str
    host: str  # name.namespace.svc.domain
    name: str
    namespace: str


@dataclass(frozen=True)
class ClusterInfo:
    """What a Cluster contributes to the mesh: its service port and subset, its traffic
    policy, whether its upstream speaks HTTP/2, and where its endpoints come from."""

    name: str
    target: ClusterName | None  # None for PassthroughCluster / BlackHoleCluster
    policy: TrafficPolicy
    http2: bool
    eds_name: str | None  # the ClusterLoadAssignment to wait for (EDS), or None (STATIC)
    static_endpoints: endpoint_pb2.ClusterLoadAssignment | None
    # Who its endpoints marked tlsMode: istio must prove to be (mesh mTLS); None: plaintext.
    mesh_peer: SpiffeId | None = None


@dataclass(frozen=True)
class LbEndpoint:
    """One usable endpoint of a ClusterLoadAssignment."""

    address: IPAddress
    port: int
    weight: int
    labels: tuple[tuple[str, str], ...]
    meshed: bool = False  # marked tlsMode: istio (a sidecar runs next to it)


def parse_cluster_name(name: str, cluster_domain: str) -> ClusterName:
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != "outbound":
        raise refuse(
            "name",
            name,
            "Detour maps a cluster onto a service by Istio's name "
            "'outbound|PORT|SUBSET|NAME.NAMESPACE.svc.DOMAIN' (or PassthroughCluster, "
            "BlackHoleCluster)",
        )
    _, port_text, subset, host = parts
    suffix = f".svc.{cluster_domain}"
    labels = host[: -len(suffix)].split(".") if host.endswith(suffix) else []
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise refuse("name", name, "the port part is not a port number")
    if len(labels) != 2 or not all(labels):
        raise refuse("name", name, f"the host part is not NAME.NAMESPACE{suffix}")
    return ClusterName(int(port_text), subset, host, labels[0], labels[1])


def translate_cluster(cluster: cluster_pb2.Cluster, cluster_domain: str) -> ClusterInfo:
    """One Cluster, checked field by field (raises Refusal naming the field)."""
    only_fields(cluster, "", _CLUSTER_FIELDS, _CLUSTER_IGNORED)
    name = cluster.name
    if name in SPECIAL_CLUSTERS:
        if cluster.HasField("transport_socket") or cluster.transport_socket_matches:
            raise refuse("transport_socket_matches", name, "not on Istio's special clusters")
        return ClusterInfo(name, None, TrafficPolicy(), False, None, None)
    target = parse_cluster_name(name, cluster_domain)
    eds_name, static = _endpoint_source(cluster)
    peer = mesh_peer(cluster, target.namespace)
    return ClusterInfo(name, target, _policy(cluster), _http2(cluster), eds_name, static, peer)


def _endpoint_source(
    cluster: cluster_pb2.Cluster,
) -> tuple[str | None, endpoint_pb2.ClusterLoadAssignment | None]:
    kind = cluster.WhichOneof("cluster_discovery_type")
    if kind != "type" or cluster.type not in (_Cluster.EDS, _Cluster.STATIC):
        shown = _Cluster.DiscoveryType.Name(cluster.type) if kind == "type" else kind
        raise refuse("type", shown, "Detour supports EDS and STATIC clusters")
    if cluster.type == _Cluster.STATIC:
        if cluster.HasField("eds_cluster_config"):
            raise refuse("eds_cluster_config", "<set>", "on a STATIC cluster")
        return None, cluster.load_assignment
    if cluster.HasField("load_assignment"):
        raise refuse("load_assignment", "<set>", "on an EDS cluster (endpoints come from EDS)")
    eds = cluster.eds_cluster_config
    only_fields(eds, "eds_cluster_config", ("eds_config", "service_name"))
    source = eds.eds_config
    only_fields(source, "eds_cluster_config.eds_config", ("ads", "resource_api_version"))
    if eds.HasField("eds_config") and not source.HasField("ads"):
        raise refuse("eds_cluster_config.eds_config", "<not ads>", "only ADS is supported")
    return eds.service_name or cluster.name, None


def _policy(cluster: cluster_pb2.Cluster) -> TrafficPolicy:
    connect_timeout = (
        seconds(cluster.connect_timeout)
        if cluster.HasField("connect_timeout")
        else ENVOY_CONNECT_TIMEOUT
    )
    if connect_timeout <= 0:
        raise refuse("connect_timeout", connect_timeout, "must be greater than zero")
    idle, per_connection = _http_pool(cluster)
    return TrafficPolicy(
        load_balancer=_load_balancer(cluster),
        connect_timeout=connect_timeout,
        connect_attempts=1,  # Envoy's tcp_proxy default (max_connect_attempts 1)
        circuit_breaker=_circuit_breaker(cluster),
        outlier_detection=_outlier_detection(cluster),
        health_check=_health_check(cluster),
        http_idle_timeout=idle,
        max_requests_per_connection=per_connection,
    )


def _load_balancer(cluster: cluster_pb2.Cluster) -> LoadBalancer:
    policy = _LB_POLICIES.get(cluster.lb_policy)
    if policy is None:
        shown = _Cluster.LbPolicy.Name(cluster.lb_policy)
        raise refuse("lb_policy", shown, f"supported: {', '.join(_LB_POLICIES_NAMES)}")
    if cluster.HasField("least_request_lb_config"):
        config = cluster.least_request_lb_config
        only_fields(config, "least_request_lb_config", ("choice_count",))
        if config.HasField("choice_count"):
            if config.choice_count.value < 2:
                raise refuse(
                    "least_request_lb_config.choice_count",
                    config.choice_count.value,
                    "must be at least 2",
                )
            return LoadBalancer(policy, choice_count=config.choice_count.value)
    if cluster.HasField("ring_hash_lb_config"):
        ring = cluster.ring_hash_lb_config
        only_fields(ring, "ring_hash_lb_config", ("minimum_ring_size",))
        if ring.HasField("minimum_ring_size"):
            return LoadBalancer(policy, ring_size=ring.minimum_ring_size.value)
    return LoadBalancer(policy)


_LB_POLICIES_NAMES = tuple(_Cluster.LbPolicy.Name(value) for value in _LB_POLICIES)


def _circuit_breaker(cluster: cluster_pb2.Cluster) -> CircuitBreaker:
    """Envoy's default thresholds; ``max_retries`` becomes a retry budget of 0% with that
    floor, which admits exactly ``max_retries`` retries in flight, as Envoy does."""
    defaults = {"max_connections": 1024, "max_pending": 1024, "max_requests": 1024}
    budget_percent, min_retries = 0.0, 3
    if not cluster.HasField("circuit_breakers"):
        return CircuitBreaker(
            **defaults, retry_budget_percent=budget_percent, min_retry_concurrency=min_retries
        )
    breakers = cluster.circuit_breakers
    only_fields(breakers, "circuit_breakers", ("thresholds",))
    for index, threshold in enumerate(breakers.thresholds):
        where = f"circuit_breakers.thresholds[{index}]"
        only_fields(
            threshold,
            where,
            (
                "priority",
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "retry_budget",
            ),
            ("track_remaining",),
        )
        if threshold.priority != base_pb2.DEFAULT:
            raise refuse(f"{where}.priority", "HIGH", "Detour has one priority (DEFAULT)")
        for field, key in (
            ("max_connections", "max_connections"),
            ("max_pending_requests", "max_pending"),
            ("max_requests", "max_requests"),
        ):
            if threshold.HasField(field):
                defaults[key] = getattr(threshold, field).value
        if threshold.HasField("max_retries"):
            min_retries = threshold.max_retries.value
        if threshold.HasField("retry_budget"):
            budget = threshold.retry_budget
            budget_percent = (
                budget.budget_percent.value if budget.HasField("budget_percent") else 20.0
            )
            min_retries = (
                budget.min_retry_concurrency.value
                if budget.HasField("min_retry_concurrency")
                else 3
            )
    return CircuitBreaker(
        **defaults, retry_budget_percent=budget_percent, min_retry_concurrency=min_retries
    )


_OUTLIER_FIELDS = (
    "consecutive_5xx",
    "enforcing_consecutive_5xx",
    "consecutive_gateway_failure",
    "enforcing_consecutive_gateway_failure",
    "base_ejection_time",
    "max_ejection_percent",
    "max_ejection_time",
    "enforcing_success_rate",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
    "split_external_local_origin_errors",
)
# Read only by the detectors Detour refuses to run (success rate, failure percentage, the
# local-origin split), or the period of Envoy's ejection sweep (Detour sweeps on every pick,
# so an ejection ends at base_ejection_time x multiplier, not at the next tick after it).
_OUTLIER_IGNORED = (
    "interval",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "consecutive_local_origin_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate",
    "failure_percentage_threshold",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)


def _outlier_detection(cluster: cluster_pb2.Cluster) -> OutlierDetection | None:
    """Envoy's consecutive-5xx and consecutive-gateway-failure detectors, its defaults (5xx on
    at 5, gateway off unless enforced). The detectors Detour does not have must be off, as
    istiod sends them: success rate (Envoy enforces it by default, so it must be set to 0)
    and failure percentage."""
    if not cluster.HasField("outlier_detection"):
        return None
    config = cluster.outlier_detection
    where = "outlier_detection"
    only_fields(config, where, _OUTLIER_FIELDS, _OUTLIER_IGNORED)

    def enforced(field: str, default: int) -> bool:
        value = getattr(config, field).value if config.HasField(field) else default
        if value not in (0, 100):
            raise refuse(
                f"{where}.{field}", value, "Detour enforces a detector always (100) or never (0)"
            )
        return value == 100

    if enforced("enforcing_success_rate", 100):
        raise refuse(
            f"{where}.enforcing_success_rate",
            config.enforcing_success_rate.value
            if config.HasField("enforcing_success_rate")
            else "100 (default)",
            "Detour has no success-rate ejection: set it to 0 (istiod does)",
        )
    for field in ("enforcing_failure_percentage", "enforcing_failure_percentage_local_origin"):
        if enforced(field, 0):
            raise refuse(f"{where}.{field}", 100, "Detour has no failure-percentage ejection")
    if config.split_external_local_origin_errors:
        raise refuse(
            f"{where}.split_external_local_origin_errors",
            True,
            "Detour counts its own failures (connect, reset, timeout) as 503s (Envoy unsplit)",
        )
    if (
        config.HasField("max_ejection_time")
        and seconds(config.max_ejection_time) != MAX_EJECTION_TIME
    ):
        raise refuse(
            f"{where}.max_ejection_time",
            seconds(config.max_ejection_time),
            f"Detour caps an ejection at Envoy's default, {MAX_EJECTION_TIME:g} s",
        )
    base = seconds(config.base_ejection_time) if config.HasField("base_ejection_time") else 30.0
    if base <= 0:
        raise refuse(f"{where}.base_ejection_time", base, "must be greater than zero")
    percent = config.max_ejection_percent.value if config.HasField("max_ejection_percent") else 10
    if percent > 100:
        raise refuse(f"{where}.max_ejection_percent", percent, "a percentage, at most 100")
    five = config.consecutive_5xx.value if config.HasField("consecutive_5xx") else 5
    gateway = (
        config.consecutive_gateway_failure.value
        if config.HasField("consecutive_gateway_failure")
        else 5
    )
    return OutlierDetection(
        consecutive_5xx_errors=five if enforced("enforcing_consecutive_5xx", 100) else 0,
        consecutive_gateway_errors=(
            gateway if enforced("enforcing_consecutive_gateway_failure", 0) else 0
        ),
        base_ejection_time=base,
        max_ejection_percent=percent,
    )


def _health_check(cluster: cluster_pb2.Cluster) -> HealthCheck | None:
    if not cluster.health_checks:
        return None
    if len(cluster.health_checks) > 1:
        raise refuse("health_checks", len(cluster.health_checks), "Detour runs one health check")
    check: health_check_pb2.HealthCheck = cluster.health_checks[0]
    where = "health_checks[0]"
    only_fields(
        check,
        where,
        ("timeout", "interval", "unhealthy_threshold", "healthy_threshold", "tcp_health_check"),
    )
    if not check.HasField("tcp_health_check"):
        raise refuse(where, "<not tcp>", "Detour's active health check is a TCP connect")
    only_fields(check.tcp_health_check, f"{where}.tcp_health_check", ())
    return HealthCheck(
        interval=seconds(check.interval) or 5.0,
        timeout=seconds(check.timeout) or 1.0,
        unhealthy_threshold=check.unhealthy_threshold.value or 2,
        healthy_threshold=check.healthy_threshold.value or 1,
    )


def _http_pool(cluster: cluster_pb2.Cluster) -> tuple[float, int]:
    """(idle timeout, max requests per connection) of the upstream HTTP pool: Envoy's
    defaults are one hour and unlimited."""
    options = _protocol_options(cluster)
    common = (
        options.common_http_protocol_options
        if options is not None and options.HasField("common_http_protocol_options")
        else cluster.common_http_protocol_options
    )
    where = "common_http_protocol_options"
    only_fields(common, where, ("idle_timeout", "max_requests_per_connection"))
    idle = seconds(common.idle_timeout) if common.HasField("idle_timeout") else 3600.0
    per_connection = common.max_requests_per_connection.value
    return (idle if idle > 0 else 3600.0), per_connection


def _http2(cluster: cluster_pb2.Cluster) -> bool:
    """Whether the upstream speaks HTTP/2: the HttpProtocolOptions extension's explicit
    config (or the deprecated http2_protocol_options field)."""
    if cluster.HasField("http2_protocol_options"):
        only_fields(cluster.http2_protocol_options, "http2_protocol_options", ())
        return True
    options = _protocol_options(cluster)
    if options is None or not options.HasField("explicit_http_config"):
        return False
    explicit = options.explicit_http_config
    where = f"typed_extension_protocol_options[{HTTP_OPTIONS_EXTENSION}].explicit_http_config"
    if explicit.HasField("http2_protocol_options"):
        only_fields(explicit.http2_protocol_options, f"{where}.http2_protocol_options", ())
        return True
    if explicit.HasField("http_protocol_options"):
        only_fields(explicit.http_protocol_options, f"{where}.http_protocol_options", ())
        return False
    raise refuse(where, explicit.WhichOneof("protocol_config"), "HTTP/1.1 or HTTP/2 only")


def _protocol_options(cluster: cluster_pb2.Cluster) -> Any:
    extensions = cluster.typed_extension_protocol_options
    for key in extensions:
        if key != HTTP_OPTIONS_EXTENSION:
            raise refuse(f"typed_extension_protocol_options[{key}]", "<set>", "not supported")
    if HTTP_OPTIONS_EXTENSION not in extensions:
        return None
    where = f"typed_extension_protocol_options[{HTTP_OPTIONS_EXTENSION}]"
    options = unpack(
        extensions[HTTP_OPTIONS_EXTENSION], http_protocol_options_pb2.HttpProtocolOptions, where
    )
    only_fields(options, where, ("common_http_protocol_options", "explicit_http_config"))
    return options


# --- EDS -------------------------------------------------------------------------------------

_HEALTHY = (health_check_pb2.UNKNOWN, health_check_pb2.HEALTHY)
_EXCLUDED = (health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING, health_check_pb2.TIMEOUT)


def lb_endpoints(assignment: endpoint_pb2.ClusterLoadAssignment) -> tuple[LbEndpoint, ...]:
    """The usable endpoints: UNHEALTHY, DRAINING and TIMEOUT ones are left out (Envoy sends
    no new traffic to them); a locality becomes Kubernetes' topology labels."""
    only_fields(assignment, "", ("cluster_name", "endpoints"), ("policy",))
    found: list[LbEndpoint] = []
    for index, group in enumerate(assignment.endpoints):
        where = f"endpoints[{index}]"
        only_fields(group, where, ("locality", "lb_endpoints"))
        labels = _locality_labels(group)
        for position, entry in enumerate(group.lb_endpoints):
            endpoint = _lb_endpoint(entry, f"{where}.lb_endpoints[{position}]", labels)
            if endpoint is not None:
                found.append(endpoint)
    return tuple(found)


def _locality_labels(
    group: endpoint_components_pb2.LocalityLbEndpoints,
) -> tuple[tuple[str, str], ...]:
    locality = group.locality
    pairs = (
        ("topology.kubernetes.io/region", locality.region),
        ("topology.kubernetes.io/zone", locality.zone),
        ("topology.istio.io/subzone", locality.sub_zone),
    )
    return tuple((key, value) for key, value in pairs if value)


def _lb_endpoint(
    entry: endpoint_components_pb2.LbEndpoint, where: str, labels: tuple[tuple[str, str], ...]
) -> LbEndpoint | None:
    only_fields(entry, where, ("endpoint", "health_status", "load_balancing_weight"), ("metadata",))
    if entry.health_status in _EXCLUDED:
        return None
    if entry.health_status not in _HEALTHY:
        shown = health_check_pb2.HealthStatus.Name(entry.health_status)
        raise refuse(f"{where}.health_status", shown, "not supported (DEGRADED)")
    endpoint = entry.endpoint
    only_fields(endpoint, f"{where}.endpoint", ("address",), ("hostname",))
    socket = endpoint.address.socket_address
    only_fields(endpoint.address, f"{where}.endpoint.address", ("socket_address",))
    only_fields(socket, f"{where}.endpoint.address.socket_address", ("address", "port_value"))
    try:
        address = ipaddress.ip_address(socket.address)
    except ValueError:
        raise refuse(
            f"{where}.endpoint.address.socket_address.address", socket.address, "not an IP address"
        ) from None
    if not 0 < socket.port_value < 65536:
        raise refuse(
            f"{where}.endpoint.address.socket_address.port_value",
            socket.port_value,
            "not a port",
        )
    weight = entry.load_balancing_weight.value if entry.HasField("load_balancing_weight") else 1
    if weight < 1:
        raise refuse(f"{where}.load_balancing_weight", weight, "must be at least 1")
    meshed = endpoint_is_meshed(entry.metadata)
    return LbEndpoint(address, socket.port_value, weight, labels, meshed)
