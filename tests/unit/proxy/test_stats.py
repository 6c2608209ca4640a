"""Per-worker Stats, the metric declarations it is keyed by, and the supervisor's merge of
worker snapshots."""

from __future__ import annotations

import json
import pickle
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dns.server import DNS_UPSTREAM_LATENCY_MS
from proxy.series import Stats, record
from proxy.session import DOWNSTREAM_CX_ACTIVE, DOWNSTREAM_CX_TOTAL
from proxy.sidecar import CONFIG_RELOAD_TOTAL
from proxy.stats import (
    ENVOY_DEFAULT_BUCKETS,
    ISTIO_TCP_LABELS,
    Counter,
    Gauge,
    Histogram,
    HistogramData,
    Merged,
    MetricInfo,
    labels,
    merge,
)
from proxy.telemetry import (
    ISTIO_REQUEST_BYTES,
    ISTIO_REQUEST_DURATION_MILLISECONDS,
    ISTIO_TCP_SENT_BYTES_TOTAL,
)
from proxy.upstream.cluster import (
    MEMBERSHIP_HEALTHY,
    MEMBERSHIP_TOTAL,
    OUTLIER_DETECTION_EJECTIONS_ACTIVE,
)
from proxy.upstream.connector import UPSTREAM_CX_CONNECT_FAIL

OUT = labels(listener="virtualOutbound")
IN = labels(listener="virtualInbound")
CLUSTER_A = labels(cluster="outbound|80||a.default.svc.cluster.local")
CLUSTER_B = labels(cluster="outbound|80||b.default.svc.cluster.local")

# Metrics of the tests' own: declared here, never in the proxy package.
M = Counter("m", "a test counter")
LEVEL = Gauge("test_level", "a test gauge")


def by_name(table: dict) -> dict:
    """A worker's live table re-keyed as the merge keys it: (Prometheus name, labels)."""
    return {(metric.name, label_values): value for (metric, label_values), value in table.items()}


def test_labels_keep_keyword_order() -> None:
    assert labels(b="2", a="1") == (("b", "2"), ("a", "1"))
    assert labels() == ()


def test_inc_defaults_to_one_and_accumulates() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT, amount=5)
    stats.inc(CONFIG_RELOAD_TOTAL)
    assert stats.counters[(DOWNSTREAM_CX_TOTAL, OUT)] == 7
    assert stats.counters[(CONFIG_RELOAD_TOTAL, ())] == 1


def test_label_values_make_distinct_series() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    stats.inc(DOWNSTREAM_CX_TOTAL, IN, 2)
    assert dict(stats.counters) == {(DOWNSTREAM_CX_TOTAL, OUT): 1, (DOWNSTREAM_CX_TOTAL, IN): 2}


def test_gauge_add_goes_up_and_down() -> None:
    stats = Stats()
    stats.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, 1)
    stats.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, 1)
    stats.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, -1)
    assert stats.gauges[(DOWNSTREAM_CX_ACTIVE, OUT)] == 1
    stats.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, -1)
    assert stats.gauges[(DOWNSTREAM_CX_ACTIVE, OUT)] == 0


def test_gauge_set_overwrites() -> None:
    stats = Stats()
    stats.gauge_add(MEMBERSHIP_TOTAL, CLUSTER_A, 4)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 2)
    assert stats.gauges[(MEMBERSHIP_TOTAL, CLUSTER_A)] == 2


# --- declarations ----------------------------------------------------------------------------


def test_metrics_hash_by_identity_in_c() -> None:
    """Two declarations alike are two series (the object is the key), and the hash is
    object's own: no Python-level __eq__/__hash__ runs on every increment."""
    one, two = Counter("same", "help"), Counter("same", "help")
    assert one != two
    assert len({one, two}) == 2
    for kind in (Counter, Gauge, Histogram):
        assert kind.__hash__ is object.__hash__
        assert kind.__eq__ is object.__eq__
    for metric in (one, LEVEL, DNS_UPSTREAM_LATENCY_MS):
        assert not hasattr(metric, "__dict__"), "__slots__ only"


@pytest.mark.parametrize(
    "bounds",
    [(), (1, 1), (5, 1), (1, float("inf")), (float("nan"),)],
    ids=["empty", "repeated", "descending", "infinite", "nan"],
)
def test_histogram_bounds_must_be_finite_and_ascending(bounds) -> None:
    with pytest.raises(ValueError, match="latency: bounds"):
        Histogram("latency", "help", bounds)


@pytest.mark.parametrize("name", ["", "1st", "with-dash", "with space"])
def test_metric_names_are_prometheus_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a Prometheus metric name"):
        Counter(name, "help")


def test_gauge_across_workers_is_sum_max_or_min() -> None:
    with pytest.raises(ValueError, match="across_workers"):
        Gauge("g", "help", across_workers="avg")


def test_istio_histograms_use_envoys_default_buckets() -> None:
    assert ENVOY_DEFAULT_BUCKETS == (
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
        60000, 300000, 600000, 1800000, 3600000,
    )  # fmt: skip
    assert ISTIO_REQUEST_DURATION_MILLISECONDS.bounds == ENVOY_DEFAULT_BUCKETS
    assert ISTIO_REQUEST_BYTES.bounds == ENVOY_DEFAULT_BUCKETS


# --- recorded through the wrong method -------------------------------------------------------


def test_a_histogram_recorded_with_inc_is_refused_at_snapshot() -> None:
    """The old DNS bug (a latency histogram hand-rolled from counters): ``inc`` takes it
    without a check, the snapshot refuses it and names it."""
    stats = Stats()
    stats.inc(DNS_UPSTREAM_LATENCY_MS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"histogram 'dns_upstream_latency_ms'.*Stats\.inc") as err:
        stats.snapshot()
    assert "Stats.observe" in str(err.value)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (lambda s: s.inc(LEVEL), r"gauge 'test_level' was recorded with Stats\.inc"),
        (lambda s: s.gauge_set(M, (), 1), r"counter 'm' was recorded with Stats\.gauge_add or"),
        (lambda s: s.gauge_add(DNS_UPSTREAM_LATENCY_MS, (), 1), r"histogram 'dns_upstream_"),
        (lambda s: s.inc("downstream_cx_total"), r"'downstream_cx_total'.*not a declared metric"),
    ],
    ids=["gauge-inc", "counter-gauge_set", "histogram-gauge_add", "a-plain-name"],
)
def test_every_mis_recorded_series_is_refused_at_snapshot(record, message: str) -> None:
    stats = Stats()
    record(stats)
    with pytest.raises(TypeError, match=message):
        stats.snapshot()


def test_observe_of_a_counter_fails_at_its_first_observation() -> None:
    """A counter has no bounds to bucket by: observe cannot even record it."""
    with pytest.raises(TypeError, match=r"counter 'm' was recorded with Stats\.observe"):
        Stats().observe(M, OUT, 1)  # type: ignore[arg-type]


def test_two_declarations_of_one_name_are_refused_at_snapshot() -> None:
    stats = Stats()
    stats.inc(M)
    stats.gauge_set(Gauge("m", "the same name as a gauge"), (), 1)
    with pytest.raises(ValueError, match="'m' is declared twice"):
        stats.snapshot()


# --- snapshots -------------------------------------------------------------------------------


def test_snapshot_shape() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT, 2)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    assert stats.snapshot() == {
        "metrics": [
            ["downstream_cx_total", "counter", DOWNSTREAM_CX_TOTAL.help, None, None],
            ["membership_total", "gauge", MEMBERSHIP_TOTAL.help, None, "max"],
        ],
        "counters": [["downstream_cx_total", [["listener", "virtualOutbound"]], 2]],
        "gauges": [["membership_total", [["cluster", CLUSTER_A[0][1]]], 3]],
        "histograms": [],
    }
    assert Stats().snapshot() == {"metrics": [], "counters": [], "gauges": [], "histograms": []}


def test_snapshot_describes_each_metric_once() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    stats.inc(DOWNSTREAM_CX_TOTAL, IN)
    stats.observe(DNS_UPSTREAM_LATENCY_MS, (), 3)
    stats.observe(DNS_UPSTREAM_LATENCY_MS, OUT, 3)
    names = [name for name, *_ in stats.snapshot()["metrics"]]
    assert names == ["downstream_cx_total", "dns_upstream_latency_ms"]


def test_snapshot_is_a_copy() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    snap = stats.snapshot()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT, 10)
    assert snap["counters"][0][2] == 1


def test_snapshot_is_plain_data() -> None:
    """It crosses processes (pickled) and may be logged or sent as JSON."""
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    stats.observe(DNS_UPSTREAM_LATENCY_MS, (), 3)
    snap = stats.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert pickle.loads(pickle.dumps(snap)) == snap
    assert all_plain(snap), "no object of ours travels"


def all_plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and all_plain(v) for k, v in value.items())
    if type(value) is list:
        return all(all_plain(item) for item in value)
    return value is None or type(value) in (str, int, float)


def test_merge_of_one_snapshot_gives_back_the_worker_stats() -> None:
    stats = Stats()
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT, 4)
    stats.inc(CONFIG_RELOAD_TOTAL)
    stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    merged = merge([stats.snapshot()])
    assert merged.counters == by_name(stats.counters)
    assert merged.gauges == by_name(stats.gauges)
    assert merged.histograms == {}
    recorded = (DOWNSTREAM_CX_TOTAL, CONFIG_RELOAD_TOTAL, MEMBERSHIP_TOTAL)
    assert merged.metrics == {metric.name: metric.info() for metric in recorded}


def workers() -> list[Stats]:
    one, two, three = Stats(), Stats(), Stats()
    one.inc(DOWNSTREAM_CX_TOTAL, OUT, 3)
    one.inc(DOWNSTREAM_CX_TOTAL, IN, 1)
    one.inc(UPSTREAM_CX_CONNECT_FAIL, CLUSTER_A, 2)
    one.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, 2)
    one.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    two.inc(DOWNSTREAM_CX_TOTAL, OUT, 5)
    two.inc(UPSTREAM_CX_CONNECT_FAIL, CLUSTER_B, 7)
    two.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, 1)
    two.gauge_add(DOWNSTREAM_CX_ACTIVE, IN, 4)
    two.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
    three.inc(CONFIG_RELOAD_TOTAL)
    three.gauge_add(DOWNSTREAM_CX_ACTIVE, OUT, -1)
    return [one, two, three]


EXPECTED_COUNTERS = {
    ("downstream_cx_total", OUT): 8,
    ("downstream_cx_total", IN): 1,
    ("upstream_cx_connect_fail", CLUSTER_A): 2,
    ("upstream_cx_connect_fail", CLUSTER_B): 7,
    ("config_reload_total", ()): 1,
}
EXPECTED_GAUGES = {
    ("downstream_cx_active", OUT): 2,
    ("downstream_cx_active", IN): 4,
    ("membership_total", CLUSTER_A): 3,  # the same cluster seen by two workers: not doubled
}


def test_merge_sums_counters_and_gauges_of_several_workers() -> None:
    merged = merge(w.snapshot() for w in workers())
    assert merged.counters == EXPECTED_COUNTERS
    assert merged.gauges == EXPECTED_GAUGES


def test_gauges_about_the_cluster_take_one_workers_view() -> None:
    """Every worker sees the whole cluster: the endpoints are not counted once per worker, and
    the usable ones are the most pessimistic worker's count."""
    one, two = Stats(), Stats()
    for stats, healthy, ejected in ((one, 3, 0), (two, 1, 2)):
        stats.gauge_set(MEMBERSHIP_TOTAL, CLUSTER_A, 3)
        stats.gauge_set(MEMBERSHIP_HEALTHY, CLUSTER_A, healthy)
        stats.gauge_set(OUTLIER_DETECTION_EJECTIONS_ACTIVE, CLUSTER_A, ejected)
    gauges = merge([one.snapshot(), two.snapshot()]).gauges
    assert gauges == {
        ("membership_total", CLUSTER_A): 3,
        ("membership_healthy", CLUSTER_A): 1,
        ("outlier_detection_ejections_active", CLUSTER_A): 2,
    }


def test_merge_keys_are_names_and_hashable_label_tuples() -> None:
    merged = merge(w.snapshot() for w in workers())
    for name, label_values in [*merged.counters, *merged.gauges]:
        assert isinstance(name, str)
        assert isinstance(label_values, tuple)
        assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in label_values)


def test_merge_keeps_label_sets_distinct() -> None:
    """Same name, different label values (or different label names): never summed together."""
    one, two = Stats(), Stats()
    one.inc(M, labels(a="1"))
    two.inc(M, labels(a="2"))
    two.inc(M, labels(b="1"))
    two.inc(M)
    counters = merge([one.snapshot(), two.snapshot()]).counters
    assert counters == {
        ("m", (("a", "1"),)): 1,
        ("m", (("a", "2"),)): 1,
        ("m", (("b", "1"),)): 1,
        ("m", ()): 1,
    }


def test_merge_of_nothing_and_of_empty_snapshots() -> None:
    assert merge([]) == Merged({}, {}, {}, {})
    assert merge([Stats().snapshot(), {}]) == Merged({}, {}, {}, {})


def test_snapshot_survives_json_and_merges_to_the_same_totals() -> None:
    snapshots = [w.snapshot() for w in workers()]
    wire = [json.loads(json.dumps(s)) for s in snapshots]
    assert merge(wire) == merge(snapshots)
    assert merge(wire)[:3] == (EXPECTED_COUNTERS, EXPECTED_GAUGES, {})


def test_json_round_trip_with_istio_labels() -> None:
    stats = Stats()
    istio = labels(**dict.fromkeys(ISTIO_TCP_LABELS, "unknown"))
    stats.inc(ISTIO_TCP_SENT_BYTES_TOTAL, istio, 12345)
    stats.inc(M, istio)
    wire = json.loads(json.dumps(stats.snapshot()))
    counters = merge([wire, wire]).counters
    assert counters == {("istio_tcp_sent_bytes_total", istio): 24690, ("m", istio): 2}
    assert [k for k, _ in istio] == list(ISTIO_TCP_LABELS)


def test_merge_keeps_the_first_description_and_drops_a_conflicting_one() -> None:
    """A name another snapshot describes as another kind (a worker on other code) does not
    mix into the sum; its help text alone may differ."""
    first, other_kind, other_help = Stats(), Stats(), Stats()
    first.inc(M, (), 2)
    other_kind.gauge_set(Gauge("m", "m as a gauge"), (), 40)
    other_help.inc(Counter("m", "reworded"), (), 3)
    merged = merge([first.snapshot(), other_kind.snapshot(), other_help.snapshot()])
    assert merged.counters == {("m", ()): 5}
    assert merged.gauges == {}
    assert merged.metrics["m"] == MetricInfo("m", "counter", "a test counter")


# --- histograms ----------------------------------------------------------------------------

DURATION = ISTIO_REQUEST_DURATION_MILLISECONDS
BOUNDS = DURATION.bounds


def buckets_of(stats: Stats, metric: Histogram = DURATION, label_values=OUT) -> list[int]:
    """Per-bucket (not cumulative) counts, +Inf last."""
    return stats.histograms[(metric, label_values)][:-1]


@pytest.mark.parametrize(
    ("value", "index"),
    [
        (-1, 0),
        (0, 0),
        (0.5, 0),  # exactly on a bound: in that bucket (le means <=)
        (0.51, 1),
        (1, 1),
        (7, 3),
        (3600000, len(BOUNDS) - 1),
        (3600000.001, len(BOUNDS)),  # above the last bound: +Inf only
        (1e12, len(BOUNDS)),
    ],
)
def test_observe_puts_a_value_in_one_bucket(value: float, index: int) -> None:
    stats = Stats()
    stats.observe(DURATION, OUT, value)
    expected = [0] * (len(BOUNDS) + 1)
    expected[index] = 1
    assert buckets_of(stats) == expected


@given(st.floats(allow_nan=False, allow_infinity=True) | st.sampled_from(BOUNDS))
def test_record_counts_in_the_bucket_bisect_finds(value: float) -> None:
    """``record`` loops over the bounds (cheaper compiled than a call to bisect): for any
    value, on a bound or between two, it must pick bisect_left's bucket."""
    row = [0] * (len(BOUNDS) + 2)
    record(row, BOUNDS, value)
    expected = [0] * (len(BOUNDS) + 1)
    expected[bisect_left(BOUNDS, value)] = 1
    assert row[:-1] == expected
    assert row[-1] == value


def test_a_counters_cell_is_its_series() -> None:
    """Adding to a resolved cell is recording the series: inc, the snapshot and the
    counters view all see it."""
    stats = Stats()
    cell = stats.counter(DOWNSTREAM_CX_TOTAL, OUT)
    assert stats.counter(DOWNSTREAM_CX_TOTAL, OUT) is cell
    cell.value += 2
    stats.inc(DOWNSTREAM_CX_TOTAL, OUT)
    assert stats.counters == {(DOWNSTREAM_CX_TOTAL, OUT): 3}
    assert stats.snapshot()["counters"] == [["downstream_cx_total", [list(OUT[0])], 3]]


def test_observe_accumulates_sum_and_series() -> None:
    stats = Stats()
    for value in (3, 3, 40.5):
        stats.observe(DURATION, OUT, value)
    stats.observe(DURATION, IN, 1)
    row = stats.histograms[(DURATION, OUT)]
    assert row[-1] == 46.5
    assert sum(row[:-1]) == 3
    assert sum(buckets_of(stats, label_values=IN)) == 1


def test_histogram_snapshot_shape_and_copy() -> None:
    stats = Stats()
    stats.observe(ISTIO_REQUEST_BYTES, OUT, 10)
    stats.observe(ISTIO_REQUEST_BYTES, OUT, 2000)
    snap = stats.snapshot()
    ((name, kind, help_text, bounds, _across),) = snap["metrics"]
    assert (name, kind, help_text) == ("istio_request_bytes", "histogram", ISTIO_REQUEST_BYTES.help)
    assert bounds == list(ISTIO_REQUEST_BYTES.bounds)
    ((name, label_values, buckets, total, count),) = snap["histograms"]
    assert (name, label_values) == ("istio_request_bytes", [["listener", "virtualOutbound"]])
    assert len(buckets) == len(bounds) + 1
    assert buckets[bounds.index(10)] == 1 and buckets[bounds.index(2500)] == 1
    assert (total, count) == (2010, 2)
    stats.observe(ISTIO_REQUEST_BYTES, OUT, 10)
    assert snap["histograms"][0][2][bounds.index(10)] == 1


def test_merge_adds_histograms_bucket_by_bucket() -> None:
    one, two = Stats(), Stats()
    for value in (0.5, 7, 7, 4000000):
        one.observe(DURATION, OUT, value)
    for value in (7, 120):
        two.observe(DURATION, OUT, value)
    two.observe(DURATION, IN, 1)
    wire = [json.loads(json.dumps(s.snapshot())) for s in (one, two)]
    merged = merge(wire)
    assert merged == merge([one.snapshot(), two.snapshot()])
    out = merged.histograms[(DURATION.name, OUT)]
    assert out.bounds == BOUNDS
    expected = [0] * (len(BOUNDS) + 1)
    expected[0], expected[BOUNDS.index(10)], expected[BOUNDS.index(250)] = 1, 3, 1
    expected[-1] = 1
    assert out.buckets == expected
    assert (out.sum, out.count) == (0.5 + 7 * 3 + 4000000 + 120, 6)
    assert out.cumulative()[-1] == out.count
    assert merged.histograms[(DURATION.name, IN)].count == 1
    # Merging did not alias a worker's lists.
    assert buckets_of(one)[BOUNDS.index(10)] == 2


def test_merge_leaves_out_a_series_with_other_bounds() -> None:
    stats = Stats()
    stats.observe(DURATION, OUT, 7)
    good = stats.snapshot()
    odd = Stats()
    odd.observe(Histogram(DURATION.name, DURATION.help, (1, 2)), OUT, 1)
    merged = merge([good, odd.snapshot()])
    assert merged.histograms[(DURATION.name, OUT)].count == 1
    assert merged.histograms[(DURATION.name, OUT)].bounds == BOUNDS


def test_merge_leaves_out_a_corrupt_histogram_row() -> None:
    stats = Stats()
    stats.observe(DURATION, OUT, 7)
    snap = stats.snapshot()
    snap["histograms"][0][2] = [1, 0]  # not len(bounds) + 1 buckets
    assert merge([snap]).histograms == {}


def test_cumulative_counts() -> None:
    data = HistogramData((1, 2, 3), [2, 0, 1, 4], 0.0, 7)
    assert data.cumulative() == [2, 2, 3, 7]
