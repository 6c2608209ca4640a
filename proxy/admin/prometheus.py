"""Prometheus text for the merged worker stats, through prometheus-client's own renderer.

An explicit CollectorRegistry (never the global one) holds one custom collector that turns
the summed counters and gauges into metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.stats import COUNTER_HELP, GAUGE_HELP, Key

Snapshot = tuple[dict[Key, int], dict[Key, int]]


class MergedStatsCollector:
    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        counters, gauges = self._current()
        yield from _families(counters, CounterMetricFamily, COUNTER_HELP)
        yield from _families(gauges, GaugeMetricFamily, GAUGE_HELP)


def _families(values: dict[Key, int], kind, helps: dict[str, str]) -> Iterator[Metric]:
    by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], int]]] = {}
    for (name, label_values), value in values.items():
        by_name.setdefault(name, []).append((label_values, value))
    for name in sorted(by_name):
        samples = by_name[name]
        label_names = [k for k, _ in samples[0][0]]
        family = kind(name, helps.get(name, name), labels=label_names)
        for label_values, value in sorted(samples):
            family.add_metric([v for _, v in label_values], value)
        yield family


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedStatsCollector(lambda: snapshot))
    return generate_latest(registry)
