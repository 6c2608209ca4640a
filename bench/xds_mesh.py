"""The scale bench's snapshots and summaries (pure: no sockets, no processes).

A snapshot is shaped the way istiod shapes a mesh of ``services`` HTTP services on port 8080,
each with ``endpoints`` pods: one EDS cluster and one ClusterLoadAssignment per service, one
``0.0.0.0_8080`` listener whose RDS route config ``8080`` holds a virtual host per service,
and the ``virtualOutbound`` listener with its PassthroughCluster. The endpoints' addresses
are never dialled: the bench measures what applying a snapshot costs, not traffic.

``generation`` moves every endpoint (a full update: every ClusterLoadAssignment changes);
:func:`move_one_endpoint` changes the first endpoint of the first service only (the single
endpoint delta istiod sends when one pod is rescheduled).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.endpoint.v3 import endpoint_pb2
from support.xds_snapshots import (
    assignment,
    cluster,
    http_listener,
    outbound,
    passthrough_cluster,
    route,
    route_config,
    snapshot,
    virtual_host,
    virtual_outbound,
)

from proxy.xds.resources import TYPE_ENDPOINT

PORT = 8080
MAX_SERVICES = 250 * 250  # two address octets per service in endpoint_ip / vip
MAX_ENDPOINTS = 250


@dataclass(frozen=True)
class Scale:
    services: int
    endpoints: int  # per service

    def __post_init__(self) -> None:
        if not 1 <= self.services <= MAX_SERVICES:
            raise ValueError(f"services={self.services}: must be 1..{MAX_SERVICES}")
        if not 1 <= self.endpoints <= MAX_ENDPOINTS:
            raise ValueError(f"endpoints={self.endpoints}: must be 1..{MAX_ENDPOINTS}")

    @property
    def total_endpoints(self) -> int:
        return self.services * self.endpoints


def service_host(index: int) -> str:
    return f"svc{index}.default"


def cluster_name(index: int) -> str:
    return outbound(PORT, service_host(index))


def vip(index: int) -> str:
    return f"10.96.{index // 250}.{index % 250 + 1}"


def endpoint_ip(service: int, endpoint: int, generation: int) -> str:
    """Unique per (service, endpoint) within a generation; every generation differs in the
    first octet after 10 (generations 0..149)."""
    return f"{100 + generation % 150}.{service // 250}.{service % 250}.{endpoint + 1}"


def base_snapshot() -> dict[str, list]:
    """What a sidecar holds before the mesh arrives: passthrough only."""
    return snapshot(virtual_outbound(), passthrough_cluster())


def full_snapshot(scale: Scale, generation: int = 0) -> dict[str, list]:
    clusters = [cluster(cluster_name(i)) for i in range(scale.services)]
    assignments = [
        assignment(
            cluster_name(i),
            [(endpoint_ip(i, e, generation), PORT) for e in range(scale.endpoints)],
        )
        for i in range(scale.services)
    ]
    hosts = [
        virtual_host(service_host(i), PORT, vip(i), [route(cluster_name(i))])
        for i in range(scale.services)
    ]
    return snapshot(
        virtual_outbound(),
        passthrough_cluster(),
        http_listener(PORT),
        route_config(str(PORT), hosts),
        *clusters,
        *assignments,
    )


def move_one_endpoint(resources: dict[str, list], generation: int) -> dict[str, list]:
    """``resources`` with only the first endpoint of the first ClusterLoadAssignment moved to
    its address in ``generation``; every other message is the very same object (the control
    plane serialises each once, and a Delta stream is sent only what changed)."""
    first = endpoint_pb2.ClusterLoadAssignment()
    first.CopyFrom(resources[TYPE_ENDPOINT][0])
    address = first.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    address.address = endpoint_ip(0, 0, generation)
    return {**resources, TYPE_ENDPOINT: [first, *resources[TYPE_ENDPOINT][1:]]}


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty sample."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))  # ceil(n * share), at least the first
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Spread:
    """p50 and p99 of a sample (publish→ACK seconds, one per sidecar and publish)."""

    p50: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(percentile(values, 0.5), percentile(values, 0.99))


def net_cpu(used: float, idle_rate: float, elapsed: float) -> float:
    """CPU seconds a sidecar spent on an update: what it used meanwhile less what it uses when
    nothing happens (its timers, Envoy's stats flush) over the same time, never below 0."""
    return max(0.0, used - idle_rate * elapsed)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
