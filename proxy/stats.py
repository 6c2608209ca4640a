"""Per-worker statistics: plain integer counters and gauges keyed by name and label values.

The hot path only does dictionary increments (no locks, no prometheus-client objects), and a
histogram observation one bisect and two list updates: each worker owns its Stats, and the
supervisor asks every worker for a snapshot when someone scrapes, sums them, and renders
Prometheus text through prometheus-client on an explicit registry.

Names follow DESIGN.md: Istio's standard metrics with Istio's labels (``istio_tcp_*``), and
Envoy-style proxy stats (``downstream_cx_total``, ``upstream_cx_connect_fail``, ...) labelled
by listener or cluster.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

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
    "istio_requests_total": "Requests (Istio standard metric)",
    "upstream_rq_total": "Requests sent upstream, retries included",
    "upstream_rq_retry": "Retries sent upstream",
    "upstream_rq_retry_success": "Retries that got a response that was not retried again",
    "upstream_rq_retry_overflow": "Retries not sent because the retry budget was exhausted",
    "upstream_rq_timeout": "Requests that hit their overall timeout",
    "upstream_rq_per_try_timeout": "Upstream attempts that hit their per-try timeout",
    "upstream_rq_pending_overflow": "Requests refused because the pending queue was full",
    "downstream_rq_total": "Requests received from downstream clients",
    "downstream_rq_1xx": "Responses with a 1xx status sent downstream",
    "downstream_rq_2xx": "Responses with a 2xx status sent downstream",
    "downstream_rq_3xx": "Responses with a 3xx status sent downstream",
    "downstream_rq_4xx": "Responses with a 4xx status sent downstream",
    "downstream_rq_5xx": "Responses with a 5xx status sent downstream",
    "upstream_cx_http1_total": "HTTP/1.1 upstream connections established",
    "upstream_cx_http2_total": "HTTP/2 upstream connections established",
    "downstream_cx_http2_total": "Downstream connections served as HTTP/2",
    "upstream_cx_pool_reuse": "Requests sent on a pooled upstream connection instead of a new one",
}
GAUGE_HELP: dict[str, str] = {
    "downstream_cx_active": "Connections open on a listener",
    "upstream_cx_active": "Upstream connections open in a cluster",
    "outlier_detection_ejections_active": "Endpoints currently ejected",
    "membership_healthy": "Usable endpoints in a cluster",
    "membership_total": "Endpoints in a cluster",
}


# Envoy's default histogram bounds (HistogramStatisticsImpl::supportedBuckets), which Istio's
# telemetry v2 uses for every standard histogram: the byte ones too, as a scrape of a real sidecar
# shows (istio/istio#22007: ``istio_request_bytes_bucket{...,le="600000"}``). The decade byte
# buckets (1 .. 1e9) were Mixer's, before Istio 1.5. Same bounds, so dashboards see the same le's.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
    60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSpec:
    """A histogram's help text and its finite upper bounds (ascending; +Inf is implicit)."""

    help: str
    bounds: tuple[float, ...]


HISTOGRAMS: dict[str, HistogramSpec] = {
    "istio_request_duration_milliseconds": HistogramSpec(
        "Request duration in milliseconds (Istio standard metric)", ENVOY_DEFAULT_BUCKETS
    ),
    "istio_request_bytes": HistogramSpec(
        "Request body sizes in bytes (Istio standard metric)", ENVOY_DEFAULT_BUCKETS
    ),
    "istio_response_bytes": HistogramSpec(
        "Response body sizes in bytes (Istio standard metric)", ENVOY_DEFAULT_BUCKETS
    ),
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
    """One worker's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.counters: defaultdict[Key, int] = defaultdict(int)
        self.gauges: defaultdict[Key, int] = defaultdict(int)
        # Per series: (bounds, row). row[i] counts observations in bucket i, NOT cumulative
        # (row[len(bounds)] is the +Inf bucket), and row[-1] is the sum of the values: one
        # flat list, so an observation is one bisect and two in-place additions.
        self.histograms: dict[Key, tuple[tuple[float, ...], list]] = {}

    def inc(self, name: str, label_values: Labels = (), amount: int = 1) -> None:
        self.counters[(name, label_values)] += amount

    def gauge_add(self, name: str, label_values: Labels, amount: int) -> None:
        self.gauges[(name, label_values)] += amount

    def gauge_set(self, name: str, label_values: Labels, value: int) -> None:
        self.gauges[(name, label_values)] = value

    def observe(self, name: str, label_values: Labels, value: float) -> None:
        """Count ``value`` in the bucket of the smallest bound >= value (Prometheus ``le``: a
        value exactly on a bound belongs to that bucket), or in +Inf above the last bound."""
        series = self.histograms.get((name, label_values))
        if series is None:
            series = self._new_histogram(name, label_values)
        bounds, row = series
        row[bisect_left(bounds, value)] += 1
        row[-1] += value

    def _new_histogram(self, name: str, label_values: Labels) -> tuple[tuple[float, ...], list]:
        """First observation of a series: its bounds come from HISTOGRAMS, so an undeclared
        name fails loudly here rather than rendering with made-up buckets."""
        try:
            bounds = HISTOGRAMS[name].bounds
        except KeyError:
            raise KeyError(f"histogram {name!r} is not declared in HISTOGRAMS") from None
        series = (bounds, [0] * (len(bounds) + 2))
        self.histograms[(name, label_values)] = series
        return series

    def snapshot(self) -> dict[str, list]:
        """A JSON-able copy, for the supervisor. A histogram travels as
        ``[name, labels, bounds, per-bucket counts (+Inf last, not cumulative), sum, count]``:
        the bounds go along so the supervisor never has to trust its own table to match."""
        return {
            "counters": [[n, list(map(list, lv)), v] for (n, lv), v in self.counters.items()],
            "gauges": [[n, list(map(list, lv)), v] for (n, lv), v in self.gauges.items()],
            "histograms": [
                [n, list(map(list, lv)), list(bounds), row[:-1], row[-1], sum(row[:-1])]
                for (n, lv), (bounds, row) in self.histograms.items()
            ],
        }


@dataclass
class HistogramData:
    """One merged histogram series: per-bucket counts (not cumulative, +Inf last), sum, count."""

    bounds: tuple[float, ...]
    buckets: list[int]
    sum: float
    count: int

    def cumulative(self) -> list[int]:
        """Running totals, as Prometheus exposes ``_bucket{le=...}`` (the last one is +Inf)."""
        totals, running = [], 0
        for value in self.buckets:
            running += value
            totals.append(running)
        return totals


class Merged(NamedTuple):
    """Every worker's stats combined, ready to render."""

    counters: dict[Key, int]
    gauges: dict[Key, int]
    histograms: dict[Key, HistogramData]


# Gauges that describe the cluster rather than the worker: every worker reports the same
# endpoints, so adding them up would count each endpoint once per worker.
_SHARED_GAUGES: dict[str, Callable[[int, int], int]] = {
    "membership_total": max,
    "membership_healthy": min,  # the most pessimistic worker's view
    "outlier_detection_ejections_active": max,
}


def _key(name: str, label_values: list) -> Key:
    return (name, tuple(tuple(pair) for pair in label_values))


def merge(snapshots: Iterable[dict[str, list]]) -> Merged:
    """Combine worker snapshots: counters, per-worker gauges and histograms add up; gauges
    about the cluster itself take one worker's value."""
    counters: defaultdict[Key, int] = defaultdict(int)
    gauges: dict[Key, int] = {}
    histograms: dict[Key, HistogramData] = {}
    for snap in snapshots:
        for name, label_values, value in snap.get("counters", []):
            counters[_key(name, label_values)] += value
        for name, label_values, value in snap.get("gauges", []):
            key = _key(name, label_values)
            if key not in gauges:
                gauges[key] = value
            else:
                gauges[key] = _SHARED_GAUGES.get(name, int.__add__)(gauges[key], value)
        for name, label_values, bounds, buckets, total, count in snap.get("histograms", []):
            _add_histogram(histograms, _key(name, label_values), bounds, buckets, total, count)
    return Merged(dict(counters), gauges, histograms)


def _add_histogram(
    into: dict[Key, HistogramData],
    key: Key,
    bounds: list[float],
    buckets: list[int],
    total: float,
    count: int,
) -> None:
    """Add one worker's series bucket by bucket. A series whose bounds differ from the ones
    already merged (a worker restarted on newer code with a changed table) cannot be added
    bucket-wise; it is left out rather than rendered as a wrong distribution."""
    merged = into.get(key)
    if merged is None:
        into[key] = HistogramData(tuple(bounds), list(buckets), total, count)
        return
    if merged.bounds != tuple(bounds) or len(merged.buckets) != len(buckets):
        return
    merged.buckets = [a + b for a, b in zip(merged.buckets, buckets, strict=True)]
    merged.sum += total
    merged.count += count


@functools.lru_cache(maxsize=4096)
def istio_labels(
    outbound: bool,
    workload: str,
    workload_namespace: str,
    service: str,
    service_name: str,
    service_namespace: str,
    request_protocol: str,
    response_flags: str,
    response_code: str | None = None,
    grpc_response_status: str = "",
) -> Labels:
    """Istio's standard metric labels, in Istio's order; the request metrics (a
    ``response_code``) add ``response_code`` and ``grpc_response_status`` to the TCP ones.
    The reporter is ``source`` outbound and ``destination`` inbound; the side this sidecar is
    not on is "unknown". Cached: almost every connection or request of a route repeats the
    same values, and building the tuple of pairs cost more than the increments it labels."""
    pairs = [
        ("reporter", "source" if outbound else "destination"),
        ("source_workload", workload if outbound else "unknown"),
        ("source_workload_namespace", workload_namespace if outbound else "unknown"),
        ("destination_workload", "unknown" if outbound else workload),
        ("destination_workload_namespace", "unknown" if outbound else workload_namespace),
        ("destination_service", service),
        ("destination_service_name", service_name),
        ("destination_service_namespace", service_namespace),
        ("request_protocol", request_protocol),
    ]
    if response_code is not None:
        pairs += [("response_code", response_code), ("grpc_response_status", grpc_response_status)]
    pairs += [("response_flags", response_flags), ("connection_security_policy", "none")]
    return tuple(pairs)
