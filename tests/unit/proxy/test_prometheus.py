"""Prometheus text rendering of merged stats, checked with prometheus-client's own parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.prometheus import MergedStatsCollector, render
from proxy.series import Stats
from proxy.session import (
    DOWNSTREAM_CX_ACTIVE,
    DOWNSTREAM_CX_REFUSED,
    DOWNSTREAM_CX_TOTAL,
    UPSTREAM_CX_ACTIVE,
)
from proxy.sidecar import CONFIG_RELOAD_REJECTED, CONFIG_RELOAD_TOTAL
from proxy.stats import (
    ISTIO_TCP_LABELS,
    Counter,
    Gauge,
    HistogramData,
    Merged,
    labels,
    merge,
)
from proxy.telemetry import (
    ISTIO_REQUEST_DURATION_MILLISECONDS,
    ISTIO_REQUESTS_TOTAL,
    ISTIO_RESPONSE_BYTES,
    ISTIO_TCP_CONNECTIONS_OPENED_TOTAL,
    ISTIO_TCP_SENT_BYTES_TOTAL,
)
from proxy.upstream.cluster import (
    MEMBERSHIP_HEALTHY,
    MEMBERSHIP_TOTAL,
    OUTLIER_DETECTION_EJECTIONS_ACTIVE,
    OUTLIER_DETECTION_EJECTIONS_TOTAL,
)
from proxy.upstream.connector import UPSTREAM_CX_CONNECT_FAIL, UPSTREAM_CX_TOTAL

OUT = labels(listener="virtualOutbound")
IN = labels(listener="virtualInbound")
CLUSTER = labels(cluster="outbound|9080||reviews.default.svc.cluster.local")
ISTIO = labels(
    **{name: "unknown" for name in ISTIO_TCP_LABELS}
    | {"reporter": "source", "destination_service_name": "reviews", "response_flags": "-"}
)


def parse(snapshot) -> dict:
    families = list(text_string_to_metric_families(render(snapshot).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    return {f.name: f for f in families}


def samples(family) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


COUNTERS = (
    DOWNSTREAM_CX_TOTAL,
    DOWNSTREAM_CX_REFUSED,
    UPSTREAM_CX_CONNECT_FAIL,
    OUTLIER_DETECTION_EJECTIONS_TOTAL,
    ISTIO_TCP_CONNECTIONS_OPENED_TOTAL,
    ISTIO_TCP_SENT_BYTES_TOTAL,
    CONFIG_RELOAD_TOTAL,
    CONFIG_RELOAD_REJECTED,
)
GAUGES = (
    DOWNSTREAM_CX_ACTIVE,
    UPSTREAM_CX_ACTIVE,
    MEMBERSHIP_TOTAL,
    MEMBERSHIP_HEALTHY,
    OUTLIER_DETECTION_EJECTIONS_ACTIVE,
)


def sample_snapshot() -> Merged:
    """A worker's snapshot and the supervisor's own, as the sidecar merges them."""
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT, 7)
    stats.inc(DOWNSTREAM_CX_TOTAL, IN, 2)
    stats.inc(DOWNSTREAM_CX_REFUSED, OUT, 1)
    stats.inc(UPSTREAM_CX_CONNECT_FAIL, CLUSTER, 3)
    stats.inc(OUTLIER_DETECTION_EJECTIONS_TOTAL, CLUSTER, 1)
    stats.inc(ISTIO_TCP_CONNECTIONS_OPENED_TOTAL, ISTIO, 5)
    stats.inc(ISTIO_TCP_SENT_BYTES_TOTAL, ISTIO, 123456789)
    stats.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, 4)
    stats.gauge_add(UPSTREAM_CX_ACTIVE, CLUSTER, 4)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER, 3)
    stats.gauge_set(MEMBERSHIP_HEALTHY, CLUSTER, 2)
    stats.gauge_set(OUTLIER_DETECTION_EJECTIONS_ACTIVE, CLUSTER, 1)
    supervisor = Stats()
    supervisor.inc(CONFIG_RELOAD_TOTAL, (), 2)
    supervisor.inc(CONFIG_RELOAD_REJECTED, (), 0)
    return merge([stats.snapshot(), supervisor.snapshot()])


def test_render_is_valid_exposition_text() -> None:
    text = render(sample_snapshot()).decode()
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    assert families
    assert {f.type for f in families} == {"counter", "gauge"}


def test_empty_snapshot_renders_nothing() -> None:
    assert render(Merged({}, {}, {}, {})) == b""


@pytest.mark.parametrize(
    ("name", "label_values", "value"),
    [
        ("downstream_cx_total", OUT, 7),
        ("downstream_cx_total", IN, 2),
        ("downstream_cx_refused", OUT, 1),
        ("upstream_cx_connect_fail", CLUSTER, 3),
        ("outlier_detection_ejections_total", CLUSTER, 1),
        ("istio_tcp_connections_opened_total", ISTIO, 5),
        ("istio_tcp_sent_bytes_total", ISTIO, 123456789),
        ("config_reload_total", (), 2),
        ("config_reload_rejected", (), 0),
    ],
)
def test_counters_expose_total_samples(name: str, label_values, value: int) -> None:
    families = parse(sample_snapshot())
    family_name = name.removesuffix("_total")
    family = families[family_name]
    assert family.type == "counter"
    sample_name = f"{family_name}_total"
    key = (sample_name, tuple(sorted(label_values)))
    assert samples(family)[key] == value
    # Only _total samples: no _created series for these plain counters.
    assert {s.name for s in family.samples} == {sample_name}


def test_counter_family_holds_one_sample_per_label_set() -> None:
    family = parse(sample_snapshot())["downstream_cx"]
    assert samples(family) == {
        ("downstream_cx_total", (("listener", "virtualInbound"),)): 2,
        ("downstream_cx_total", (("listener", "virtualOutbound"),)): 7,
    }


def test_istio_labels_are_all_present() -> None:
    family = parse(sample_snapshot())["istio_tcp_connections_opened"]
    (sample,) = family.samples
    assert set(sample.labels) == set(ISTIO_TCP_LABELS)
    assert sample.labels["reporter"] == "source"
    assert sample.labels["destination_service_name"] == "reviews"
    assert sample.labels["response_flags"] == "-"


@pytest.mark.parametrize(
    ("name", "label_values", "value"),
    [
        ("downstream_cx_active", OUT, 4),
        ("upstream_cx_active", CLUSTER, 4),
        ("membership_total", CLUSTER, 3),
        ("membership_healthy", CLUSTER, 2),
        ("outlier_detection_ejections_active", CLUSTER, 1),
    ],
)
def test_gauges(name: str, label_values, value: int) -> None:
    family = parse(sample_snapshot())[name]
    assert family.type == "gauge"
    assert samples(family) == {(name, tuple(sorted(label_values))): value}


def test_negative_and_zero_gauges() -> None:
    families = parse(
        Merged({}, {("downstream_cx_active", OUT): -1, ("upstream_cx_active", ()): 0}, {}, {})
    )
    assert samples(families["downstream_cx_active"]) == {
        ("downstream_cx_active", (("listener", "virtualOutbound"),)): -1
    }
    assert samples(families["upstream_cx_active"]) == {("upstream_cx_active", ()): 0}


def test_help_text_comes_with_the_snapshot() -> None:
    """The declared help, carried by the workers' snapshots: no table in the renderer."""
    families = parse(sample_snapshot())
    for metric in COUNTERS:
        assert families[metric.name.removesuffix("_total")].documentation == metric.help
    for metric in GAUGES:
        assert families[metric.name].documentation == metric.help


def test_help_text_of_a_metric_the_supervisor_never_declared() -> None:
    """A worker's metric reaches the text with its own help, whatever the renderer's process
    has imported."""
    stats = Stats()
    stats.inc(Counter("only_in_a_worker_total", "Declared where it is counted"))
    stats.gauge_set(Gauge("only_in_a_worker_level", "Also declared there"), (), 1)
    families = parse(merge([json.loads(json.dumps(stats.snapshot()))]))
    assert families["only_in_a_worker"].documentation == "Declared where it is counted"
    assert families["only_in_a_worker_level"].documentation == "Also declared there"


def test_unknown_names_get_their_name_as_help() -> None:
    families = parse(Merged({("custom_thing_total", ()): 1}, {("custom_level", ()): 2}, {}, {}))
    assert families["custom_thing"].documentation == "custom_thing_total"
    assert families["custom_level"].documentation == "custom_level"


def test_series_of_one_name_with_different_label_names() -> None:
    """Each series keeps its own label names, even when they differ within one family."""
    counters = {("m_total", labels(a="1")): 1, ("m_total", labels(b="2", c="3")): 2}
    family = parse(Merged(counters, {}, {}, {}))["m"]
    assert samples(family) == {
        ("m_total", (("a", "1"),)): 1,
        ("m_total", (("b", "2"), ("c", "3"))): 2,
    }


def test_label_values_are_escaped() -> None:
    tricky = 'a "quoted" \\ back\nslash'
    families = parse(Merged({("downstream_cx_total", labels(listener=tricky)): 1}, {}, {}, {}))
    (sample,) = families["downstream_cx"].samples
    assert sample.labels == {"listener": tricky}


def test_render_of_merged_json_snapshots_matches_the_sums() -> None:
    one, two = Stats(), Stats()
    one.inc(UPSTREAM_CX_TOTAL, CLUSTER, 3)
    two.inc(UPSTREAM_CX_TOTAL, CLUSTER, 4)
    one.gauge_add(UPSTREAM_CX_ACTIVE, CLUSTER, 1)
    two.gauge_add(UPSTREAM_CX_ACTIVE, CLUSTER, 2)
    wire = [json.loads(json.dumps(s.snapshot())) for s in (one, two)]
    families = parse(merge(wire))
    assert samples(families["upstream_cx"]) == {("upstream_cx_total", tuple(CLUSTER)): 7}
    assert samples(families["upstream_cx_active"]) == {("upstream_cx_active", tuple(CLUSTER)): 3}


def test_collector_reads_the_current_snapshot_at_collect_time() -> None:
    state = {"value": 1}
    collector = MergedStatsCollector(
        lambda: Merged({("downstream_cx_total", OUT): state["value"]}, {}, {}, {})
    )
    first = [s.value for f in collector.collect() for s in f.samples]
    state["value"] = 5
    second = [s.value for f in collector.collect() for s in f.samples]
    assert (first, second) == ([1], [5])


def test_counters_then_gauges_each_sorted_by_name() -> None:
    merged = sample_snapshot()
    counters, gauges = merged.counters, merged.gauges
    text = render(merged).decode()
    # Counter HELP lines carry the _total name in the text format.
    help_names = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    counter_names = [
        name.removesuffix("_total") + "_total" for name in sorted({name for name, _ in counters})
    ]
    gauge_names = sorted({name for name, _ in gauges})
    assert help_names == counter_names + gauge_names


# --- histograms ----------------------------------------------------------------------------

DURATION = ISTIO_REQUEST_DURATION_MILLISECONDS
BOUNDS = DURATION.bounds
HTTP = labels(reporter="source", destination_service_name="reviews", response_code="200")


def histogram_samples(family, label_values=HTTP) -> tuple[dict[float, float], float, float]:
    """({le: cumulative count}, sum, count) of one series, read back from the parsed text."""
    wanted = dict(label_values)
    buckets, total, count = {}, None, None
    for sample in family.samples:
        own = {k: v for k, v in sample.labels.items() if k != "le"}
        if own != wanted:
            continue
        if sample.name.endswith("_bucket"):
            buckets[float(sample.labels["le"])] = sample.value
        elif sample.name.endswith("_sum"):
            total = sample.value
        elif sample.name.endswith("_count"):
            count = sample.value
    return buckets, total, count


def two_workers() -> Merged:
    one, two = Stats(), Stats()
    for value in (0.3, 1, 1, 42, 7200000):
        one.observe(DURATION, HTTP, value)
    for value in (1, 99.9, 100, 100.1):
        two.observe(DURATION, HTTP, value)
    two.observe(DURATION, OUT, 5)
    one.inc(ISTIO_REQUESTS_TOTAL, HTTP, 5)
    two.inc(ISTIO_REQUESTS_TOTAL, HTTP, 4)
    return merge(json.loads(json.dumps(s.snapshot())) for s in (one, two))


def test_merged_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    families = parse(two_workers())
    family = families[DURATION.name]
    assert family.type == "histogram"
    assert family.documentation == DURATION.help
    buckets, total, count = histogram_samples(family)
    assert list(buckets) == [*BOUNDS, float("inf")]
    expected = {bound: 0 for bound in BOUNDS}
    for value in (0.3, 1, 1, 42, 1, 99.9, 100, 100.1):  # every observation but the huge one
        for bound in BOUNDS:
            if value <= bound:
                expected[bound] += 1
    assert {b: v for b, v in buckets.items() if b != float("inf")} == expected
    assert buckets[float("inf")] == count == 9
    assert total == pytest.approx(0.3 + 1 + 1 + 42 + 7200000 + 1 + 99.9 + 100 + 100.1)
    assert samples(families["istio_requests"]) == {("istio_requests_total", tuple(sorted(HTTP))): 9}


def test_each_label_set_is_its_own_series() -> None:
    family = parse(two_workers())[DURATION.name]
    buckets, total, count = histogram_samples(family, OUT)
    assert (total, count) == (5, 1)
    assert buckets[1.0] == 0 and buckets[5.0] == 1 and buckets[float("inf")] == 1


def test_an_observation_on_a_bound_is_in_that_bucket() -> None:
    stats = Stats()
    stats.observe(DURATION, HTTP, 250)
    buckets, _, _ = histogram_samples(parse(merge([stats.snapshot()]))[DURATION.name])
    assert buckets[100.0] == 0
    assert buckets[250.0] == 1


def test_values_above_the_last_bound_are_only_in_inf() -> None:
    stats = Stats()
    stats.observe(DURATION, HTTP, BOUNDS[-1] + 1)
    stats.observe(DURATION, HTTP, 1e15)
    buckets, total, count = histogram_samples(parse(merge([stats.snapshot()]))[DURATION.name])
    assert all(buckets[bound] == 0 for bound in BOUNDS)
    assert buckets[float("inf")] == count == 2
    assert total == BOUNDS[-1] + 1 + 1e15


def test_histogram_text_lines() -> None:
    stats = Stats()
    stats.observe(ISTIO_RESPONSE_BYTES, OUT, 1)
    text = render(merge([stats.snapshot()])).decode()
    assert "# TYPE istio_response_bytes histogram" in text
    assert 'istio_response_bytes_bucket{le="0.5",listener="virtualOutbound"} 0.0' in text
    assert 'istio_response_bytes_bucket{le="1.0",listener="virtualOutbound"} 1.0' in text
    assert 'istio_response_bytes_bucket{le="+Inf",listener="virtualOutbound"} 1.0' in text
    assert 'istio_response_bytes_count{listener="virtualOutbound"} 1.0' in text
    assert 'istio_response_bytes_sum{listener="virtualOutbound"} 1.0' in text
    assert "_created" not in text


def test_unknown_histogram_names_render_with_their_name_as_help() -> None:
    data = HistogramData((1.0, 2.0), [1, 1, 1], 10.0, 3)
    families = parse(Merged({}, {}, {("custom_latency", ()): data}, {}))
    assert families["custom_latency"].documentation == "custom_latency"
    buckets, total, count = histogram_samples(families["custom_latency"], ())
    assert buckets == {1.0: 1, 2.0: 2, float("inf"): 3}
    assert (total, count) == (10.0, 3)
