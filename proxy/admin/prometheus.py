"""Prometheus text for the merged worker stats, through prometheus-client's own renderer.

An explicit CollectorRegistry (never the global one) holds one custom collector that turns
the summed counters, gauges and histograms into metric families at scrape time. Help texts
come with the merged stats (each worker's snapshot describes the metrics it recorded), not
from a table here: a metric is declared once, by the module that records it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.stats import HistogramData, Labels, Merged, MetricInfo, SeriesKey

Snapshot = Merged


class MergedStatsCollector:
    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        merged = self._current()
        yield from _families(merged.counters, CounterMetricFamily, merged.metrics)
        yield from _families(merged.gauges, GaugeMetricFamily, merged.metrics)
        yield from _histogram_families(merged.histograms, merged.metrics)


def _help(metrics: dict[str, MetricInfo], name: str) -> str:
    """The declared help text; a series nothing described (a hand-built Merged) shows its
    name rather than no HELP line."""
    info = metrics.get(name)
    return info.help if info is not None else name


def _by_name(values: dict[SeriesKey, object]) -> dict[str, list[tuple[Labels, object]]]:
    by_name: dict[str, list[tuple[Labels, object]]] = {}
    for (name, label_values), value in values.items():
        by_name.setdefault(name, []).append((label_values, value))
    return by_name


def _family(kind, name: str, help_text: str, series: list, add: Callable) -> Metric:
    """One family for every series of ``name``. A family pairs values with the label names it
    was built with, and two series of one name may carry different label names, so each series
    is added through a family of its own label names and its samples moved over."""
    family = kind(name, help_text, labels=[k for k, _ in series[0][0]])
    for label_values, value in series:
        part = kind(name, help_text, labels=[k for k, _ in label_values])
        add(part, [v for _, v in label_values], value)
        family.samples.extend(part.samples)
    return family


def _families(
    values: dict[SeriesKey, int], kind, metrics: dict[str, MetricInfo]
) -> Iterator[Metric]:
    by_name = _by_name(values)
    for name in sorted(by_name):
        series = sorted(by_name[name])
        yield _family(kind, name, _help(metrics, name), series, _add_value)


def _add_value(family: Metric, label_values: list[str], value: int) -> None:
    family.add_metric(label_values, value)


def _histogram_families(
    histograms: dict[SeriesKey, HistogramData], metrics: dict[str, MetricInfo]
) -> Iterator[Metric]:
    """One family per name: cumulative ``_bucket{le}`` (ending in +Inf), ``_sum`` and
    ``_count`` per label set, with the bounds the workers actually counted with."""
    by_name = _by_name(histograms)
    for name in sorted(by_name):
        series = sorted(by_name[name], key=lambda item: item[0])
        yield _family(HistogramMetricFamily, name, _help(metrics, name), series, _add_histogram)


def _add_histogram(family: Metric, label_values: list[str], data: HistogramData) -> None:
    family.add_metric(label_values, _buckets(data), data.sum)


def _buckets(data: HistogramData) -> list[tuple[str, float]]:
    """``le`` values written as prometheus-client's own Histogram writes them ("1.0", "+Inf")."""
    les = [floatToGoString(bound) for bound in data.bounds] + ["+Inf"]
    return list(zip(les, data.cumulative(), strict=True))


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedStatsCollector(lambda: snapshot))
    return generate_latest(registry)
