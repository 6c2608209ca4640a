"""Per-worker statistics: plain integer counters and gauges keyed by name and label values.

The hot path only does dictionary increments (no locks, no prometheus-client objects): each
worker owns its Stats, and the supervisor asks every worker for a snapshot when someone scrapes,
sums them, and renders Prometheus text through prometheus-client on an explicit registry.

Names follow DESIGN.md: Istio's standard metrics with Istio's labels (``istio_tcp_*``), and
Envoy-style proxy stats (``downstream_cx_total``, ``upstream_cx_connect_fail``, ...) labelled
by listener or cluster.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

# Istio's TCP metric labels, in Istio's order; "unknown" where the sidecar cannot know.
ISTIO_TCP_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)

COUNTER_HELP: dict[str, str] = {
    "istio_tcp_connections_opened_total": "TCP connections opened (Istio standard metric)",
    "istio_tcp_connections_closed_total": "TCP connections closed (Istio standard metric)",
    "istio_tcp_sent_bytes_total": "Bytes sent to the downstream during TCP connections",
    "istio_tcp_received_bytes_total": "Bytes received from the downstream during TCP connections",
    "downstream_cx_total": "Connections accepted by a listener",
    "downstream_cx_refused": "Connections refused: not redirected, a loop, or not in the mesh",
    "downstream_cx_idle_timeout": "Connections closed by the idle timeout",
    "upstream_cx_total": "Upstream connections established",
    "upstream_cx_connect_fail": "Upstream connect attempts that failed",
    "upstream_cx_connect_timeout": "Upstream connect attempts that timed out",
    "upstream_cx_overflow": "Connections refused by the circuit breaker",
    "upstream_cx_none_healthy": "Connections with no usable endpoint",
    "upstream_cx_connect_attempts_exceeded": "Connections that ran out of connect attempts",
    "outlier_detection_ejections_total": "Endpoints ejected by outlier detection",
    "config_reload_total": "Mesh config versions applied",
    "config_reload_rejected": "Mesh config versions refused (the running config stayed)",
}
GAUGE_HELP: dict[str, str] = {
    "downstream_cx_active": "Connections open on a listener",
    "upstream_cx_active": "Upstream connections open in a cluster",
    "outlier_detection_ejections_active": "Endpoints currently ejected",
    "membership_healthy": "Usable endpoints in a cluster",
    "membership_total": "Endpoints in a cluster",
}


def labels(**values: str) -> Labels:
    return tuple(values.items())


@functools.cache
def listener_labels(listener: str) -> Labels:
    """``labels(listener=...)``, built once per listener name: it is keyed on every connection."""
    return (("listener", listener),)


@functools.cache
def cluster_labels(cluster: str) -> Labels:
    """``labels(cluster=...)``, built once per cluster name (a handful per mesh)."""
    return (("cluster", cluster),)


class Stats:
    """One worker's counters and gauges."""

    def __init__(self) -> None:
        self.counters: defaultdict[Key, int] = defaultdict(int)
        self.gauges: defaultdict[Key, int] = defaultdict(int)

    def inc(self, name: str, label_values: Labels = (), amount: int = 1) -> None:
        self.counters[(name, label_values)] += amount

    def gauge_add(self, name: str, label_values: Labels, amount: int) -> None:
        self.gauges[(name, label_values)] += amount

    def gauge_set(self, name: str, label_values: Labels, value: int) -> None:
        self.gauges[(name, label_values)] = value

    def snapshot(self) -> dict[str, list]:
        """A JSON-able copy, for the supervisor."""
        return {
            "counters": [[n, list(map(list, lv)), v] for (n, lv), v in self.counters.items()],
            "gauges": [[n, list(map(list, lv)), v] for (n, lv), v in self.gauges.items()],
        }


# Gauges that describe the cluster rather than the worker: every worker reports the same
# endpoints, so adding them up would count each endpoint once per worker.
_SHARED_GAUGES: dict[str, Callable[[int, int], int]] = {
    "membership_total": max,
    "membership_healthy": min,  # the most pessimistic worker's view
    "outlier_detection_ejections_active": max,
}


def merge(snapshots: Iterable[dict[str, list]]) -> tuple[dict[Key, int], dict[Key, int]]:
    """Combine worker snapshots into (counters, gauges): counters and per-worker gauges add
    up; gauges about the cluster itself take one worker's value."""
    counters: defaultdict[Key, int] = defaultdict(int)
    gauges: dict[Key, int] = {}
    for snap in snapshots:
        for name, label_values, value in snap.get("counters", []):
            counters[(name, tuple(tuple(pair) for pair in label_values))] += value
        for name, label_values, value in snap.get("gauges", []):
            key = (name, tuple(tuple(pair) for pair in label_values))
            if key not in gauges:
                gauges[key] = value
            else:
                gauges[key] = _SHARED_GAUGES.get(name, int.__add__)(gauges[key], value)
    return dict(counters), gauges
