"""Per-worker statistics: metrics declared by the modules that record them, counted in plain
dictionaries.

Each module declares, at its top, the metrics it records (``Counter``, ``Gauge``,
``Histogram``: name, help text, histogram bounds); a metric several modules record is
declared once, in the lowest-level module that owns it, and imported by the others. There is
no central table: the declaration objects are the dictionary keys, and a snapshot carries each
metric's name, kind and help text to the supervisor, which renders Prometheus text from that.

The hot path only adds to a series' cell or histogram row (no locks, no prometheus-client
objects, no type check): each worker owns its ``Stats`` (``proxy.series``), and the supervisor
asks every worker for a snapshot when someone scrapes, sums them, and renders Prometheus text
through prometheus-client on an explicit registry. A metric recorded through the wrong method
(a Histogram given to ``inc``) is refused when the snapshot is taken, so the check costs at
scrape time only.

Names follow Istio's standard metrics with Istio's labels (``istio_tcp_*``), and Envoy-style
proxy stats (``downstream_cx_total``, ``upstream_cx_connect_fail``, ...) labelled by listener
or cluster.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

Labels = tuple[tuple[str, str], ...]
Key = tuple["Metric", Labels]  # a worker's live series: the declaration object, label values
SeriesKey = tuple[str, Labels]  # a merged series: the Prometheus name, label values

# Istio's TCP metric labels, in Istio's order; "unknown" where the sidecar cannot know.
ISTIO_TCP_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)

# Envoy's default histogram bounds (HistogramStatisticsImpl::supportedBuckets), which Istio's
# telemetry v2 uses for every standard histogram: the byte ones too, as a scrape of a real sidecar
# shows (istio/istio#22007: ``istio_request_bytes_bucket{...,le="600000"}``). The decade byte
# buckets (1 .. 1e9) were Mixer's, before Istio 1.5. Same bounds, so dashboards see the same le's.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
    60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip

_PROMETHEUS_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# How the supervisor combines one gauge series reported by several workers.
_ACROSS_WORKERS: dict[str, Callable[[int, int], int]] = {"sum": int.__add__, "max": max, "min": min}


class MetricInfo(NamedTuple):
    """A metric as a snapshot describes it: all the supervisor knows of a metric whose module
    it may never have imported (a worker's HTTP/2 code, say)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    bounds: tuple[float, ...] | None = None  # histograms: finite upper bounds, ascending
    across_workers: str | None = None  # gauges: "sum", "max" or "min"


class Metric:
    """A declared metric: its Prometheus name and help text. The object itself is the key of
    its series in ``Stats``: no ``__eq__``, so it hashes by identity, in C, on the hot path."""

    __slots__ = ("help", "name")
    kind: ClassVar[str] = ""
    recorded_with: ClassVar[str] = ""  # the Stats method(s) for this kind, for error messages

    def __init__(self, name: str, help: str) -> None:
        if not _PROMETHEUS_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a Prometheus metric name")
        self.name = name
        self.help = help

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def info(self) -> MetricInfo:
        return MetricInfo(self.name, self.kind, self.help)


class Counter(Metric):
    """Only goes up; ``Stats.inc``. Rendered as ``<name without _total>_total``, as
    prometheus-client writes every counter."""

    __slots__ = ()
    kind = "counter"
    recorded_with = "inc"


class Gauge(Metric):
    """Goes up and down; ``Stats.gauge_add`` / ``Stats.gauge_set``. ``across_workers`` says how
    the supervisor combines workers' values: "sum" for what each worker holds (its
    connections), "max" or "min" for what describes the cluster itself, which every worker
    sees whole (summing would count each endpoint once per worker)."""

    __slots__ = ("across_workers",)
    kind = "gauge"
    recorded_with = "gauge_add or gauge_set"

    def __init__(self, name: str, help: str, across_workers: str = "sum") -> None:
        super().__init__(name, help)
        if across_workers not in _ACROSS_WORKERS:
            raise ValueError(f"{name}: across_workers must be one of {sorted(_ACROSS_WORKERS)}")
        self.across_workers = across_workers

    def info(self) -> MetricInfo:
        return MetricInfo(self.name, self.kind, self.help, across_workers=self.across_workers)


class Histogram(Metric):
    """A distribution over fixed buckets; ``Stats.observe``. ``bounds`` are the finite upper
    bounds, ascending (+Inf is implicit), checked here because bisect on unsorted bounds would
    count silently wrong."""

    __slots__ = ("bounds",)
    kind = "histogram"
    recorded_with = "observe"

    def __init__(self, name: str, help: str, bounds: Iterable[float]) -> None:
        super().__init__(name, help)
        self.bounds = tuple(bounds)
        finite = all(math.isfinite(bound) for bound in self.bounds)
        ascending = all(a < b for a, b in itertools.pairwise(self.bounds))
        if not self.bounds or not finite or not ascending:
            raise ValueError(f"{name}: bounds must be finite and strictly ascending")

    def info(self) -> MetricInfo:
        return MetricInfo(self.name, self.kind, self.help, bounds=self.bounds)


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
    """Every worker's stats combined, ready to render: series keyed by (name, labels), and
    each name's kind and help text."""

    counters: dict[SeriesKey, int]
    gauges: dict[SeriesKey, int]
    histograms: dict[SeriesKey, HistogramData]
    metrics: dict[str, MetricInfo]


def _key(name: str, label_values: list) -> SeriesKey:
    return (name, tuple(tuple(pair) for pair in label_values))


def merge(snapshots: Iterable[dict[str, list]]) -> Merged:
    """Combine snapshots: counters, per-worker gauges and histograms add up; gauges about the
    cluster itself take one worker's value (``Gauge.across_workers``). The first description
    of a name is kept; a snapshot that describes it otherwise (another kind, other bounds: a
    worker restarted on newer code) has its series of that name left out rather than mixed
    into a wrong sum."""
    merged = Merged({}, {}, {}, {})
    for snap in snapshots:
        kinds = _agreeing_kinds(merged.metrics, snap.get("metrics", []))
        for name, label_values, value in snap.get("counters", []):
            if kinds.get(name) == "counter":
                key = _key(name, label_values)
                merged.counters[key] = merged.counters.get(key, 0) + value
        for name, label_values, value in snap.get("gauges", []):
            if kinds.get(name) == "gauge":
                _add_gauge(merged, _key(name, label_values), value)
        for name, label_values, buckets, total, count in snap.get("histograms", []):
            if kinds.get(name) == "histogram":
                _add_histogram(merged, _key(name, label_values), buckets, total, count)
    return merged


def _agreeing_kinds(known: dict[str, MetricInfo], descriptions: list) -> dict[str, str]:
    """name -> kind for the metrics one snapshot describes as ``known`` does (new names are
    added to ``known``). Help texts may differ between versions: that is no reason to drop."""
    kinds = {}
    for name, kind, help_text, bounds, across_workers in descriptions:
        bounds = None if bounds is None else tuple(bounds)
        info = MetricInfo(name, kind, help_text, bounds, across_workers)
        if known.setdefault(name, info)._replace(help=help_text) == info:
            kinds[name] = kind
    return kinds


def _add_gauge(into: Merged, key: SeriesKey, value: int) -> None:
    current = into.gauges.get(key)
    if current is None:
        into.gauges[key] = value
        return
    across_workers = into.metrics[key[0]].across_workers or "sum"
    into.gauges[key] = _ACROSS_WORKERS[across_workers](current, value)


def _add_histogram(
    into: Merged, key: SeriesKey, buckets: list[int], total: float, count: int
) -> None:
    """Add one worker's series bucket by bucket, with the bounds its snapshot described (the
    same as every other snapshot's, or the series would not get here); a row of the wrong
    length is a corrupt snapshot and left out."""
    bounds = into.metrics[key[0]].bounds or ()
    if len(buckets) != len(bounds) + 1:
        return
    merged = into.histograms.get(key)
    if merged is None:
        into.histograms[key] = HistogramData(bounds, list(buckets), total, count)
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
    source_principal: str = "unknown",
    destination_principal: str = "unknown",
    security_policy: str = "none",
) -> Labels:
    """Istio's standard metric labels, in Istio's order; the request metrics (a
    ``response_code``) add ``response_code`` and ``grpc_response_status`` to the TCP ones.
    The reporter is ``source`` outbound and ``destination`` inbound; the side this sidecar is
    not on is "unknown". The principals are SPIFFE IDs as Istio writes them
    (``spiffe://cluster.local/ns/default/sa/client``) when mesh mTLS proved them;
    ``security_policy`` is "mutual_tls" for a mesh mTLS connection, else "none". Cached:
    almost every connection or request of a route repeats the same values, and building the
    tuple of pairs cost more than the increments it labels."""
    pairs = [
        ("reporter", "source" if outbound else "destination"),
        ("source_workload", workload if outbound else "unknown"),
        ("source_workload_namespace", workload_namespace if outbound else "unknown"),
        ("source_principal", source_principal),
        ("destination_workload", "unknown" if outbound else workload),
        ("destination_workload_namespace", "unknown" if outbound else workload_namespace),
        ("destination_principal", destination_principal),
        ("destination_service", service),
        ("destination_service_name", service_name),
        ("destination_service_namespace", service_namespace),
        ("request_protocol", request_protocol),
    ]
    if response_code is not None:
        pairs += [("response_code", response_code), ("grpc_response_status", grpc_response_status)]
    pairs += [("response_flags", response_flags), ("connection_security_policy", security_policy)]
    return tuple(pairs)
