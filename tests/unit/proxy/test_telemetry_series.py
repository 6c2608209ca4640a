"""Telemetry's resolved series: a request or connection records Istio's series through a
cache of them by label values, and must count exactly what the labelled records would."""

from __future__ import annotations

from proxy.access_log import AccessLog
from proxy.config.model import Mesh
from proxy.series import Stats
from proxy.stats import istio_labels
from proxy.telemetry import (
    ISTIO_REQUEST_BYTES,
    ISTIO_REQUESTS_TOTAL,
    ISTIO_TCP_SENT_BYTES_TOTAL,
    MAX_CACHED_LABEL_SETS,
    LabelValues,
    Telemetry,
)


def values(service: str, status: str = "200") -> LabelValues:
    return (
        True,
        "client",
        "default",
        f"{service}.default.svc.cluster.local",
        service,
        "default",
        "http",
        "-",
        status,
        "",
        "unknown",
        "unknown",
        "none",
    )


def telemetry() -> Telemetry:
    return Telemetry(Stats(), AccessLog("off"), Mesh(), "off")


def test_request_series_are_the_labelled_series() -> None:
    t = telemetry()
    series = t.request_series.get(values("backend"))
    series.requests.value += 1
    labels = istio_labels(*values("backend"))
    t.stats.inc(ISTIO_REQUESTS_TOTAL, labels)
    assert t.stats.counters[(ISTIO_REQUESTS_TOTAL, labels)] == 2
    assert t.stats.histograms[(ISTIO_REQUEST_BYTES, labels)] is series.request_bytes
    assert t.request_series.get(values("backend", "503")) is not series


def test_tcp_series_are_the_labelled_series() -> None:
    t = telemetry()
    t.tcp_series.get(values("db")).sent.value += 100
    t.stats.inc(ISTIO_TCP_SENT_BYTES_TOTAL, istio_labels(*values("db")), 5)
    assert t.stats.counters[(ISTIO_TCP_SENT_BYTES_TOTAL, istio_labels(*values("db")))] == 105


def test_the_cache_is_bounded_and_a_dropped_entry_resolves_to_the_same_series() -> None:
    t = telemetry()
    first = t.request_series.get(values("s0"))
    first.requests.value += 1
    for n in range(1, MAX_CACHED_LABEL_SETS + 1):
        t.request_series.get(values(f"s{n}"))
    assert len(t.request_series) <= MAX_CACHED_LABEL_SETS
    again = t.request_series.get(values("s0"))
    again.requests.value += 1
    assert again.requests is first.requests
    assert t.stats.counters[(ISTIO_REQUESTS_TOTAL, istio_labels(*values("s0")))] == 2
