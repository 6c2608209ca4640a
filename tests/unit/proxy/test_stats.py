"""Per-worker Stats and the supervisor's merge of worker snapshots."""

from __future__ import annotations

import json

import pytest

from proxy.stats import (
    COUNTER_HELP,
    GAUGE_HELP,
    HISTOGRAMS,
    ISTIO_TCP_LABELS,
    HistogramData,
    Stats,
    labels,
    merge,
)

OUT = labels(listener="virtualOutbound")
IN = labels(listener="virtualInbound")
CLUSTER_A = labels(cluster="outbound|80||a.default.svc.cluster.local")
CLUSTER_B = labels(cluster="outbound|80||b.default.svc.cluster.local")


def test_labels_keep_keyword_order() -> None:
    assert labels(b="2", a="1") == (("b", "2"), ("a", "1"))
    assert labels() == ()


def test_inc_defaults_to_one_and_accumulates() -> None:
    stats = Stats()
    stats.inc("downstream_cx_total", OUT)
    stats.inc("downstream_cx_total", OUT)
    stats.inc("downstream_cx_total", OUT, amount=5)
    stats.inc("config_reload_total")
    assert stats.counters[("downstream_cx_total", OUT)] == 7
    assert stats.counters[("config_reload_total", ())] == 1


def test_label_values_make_distinct_series() -> None:
    stats = Stats()
    stats.inc("downstream_cx_total", OUT)
    stats.inc("downstream_cx_total", IN, 2)
    assert dict(stats.counters) == {("downstream_cx_total", OUT): 1, ("downstream_cx_total", IN): 2}


def test_gauge_add_goes_up_and_down() -> None:
    stats = Stats()
    stats.gauge_add("downstream_cx_active", OUT, 1)
    stats.gauge_add("downstream_cx_active", OUT, 1)
    stats.gauge_add("downstream_cx_active", OUT, -1)
    assert stats.gauges[("downstream_cx_active", OUT)] == 1
    stats.gauge_add("downstream_cx_active", OUT, -1)
    assert stats.gauges[("downstream_cx_active", OUT)] == 0


def test_gauge_set_overwrites() -> None:
    stats = Stats()
    stats.gauge_add("membership_total", CLUSTER_A, 4)
    stats.gauge_set("membership_total", CLUSTER_A, 3)
    stats.gauge_set("membership_total", CLUSTER_A, 2)
    assert stats.gauges[("membership_total", CLUSTER_A)] == 2


def test_counters_and_gauges_are_separate() -> None:
    stats = Stats()
    stats.inc("x", OUT, 3)
    stats.gauge_set("x", OUT, 10)
    assert stats.counters[("x", OUT)] == 3
    assert stats.gauges[("x", OUT)] == 10


def test_snapshot_shape() -> None:
    stats = Stats()
    stats.inc("downstream_cx_total", OUT, 2)
    stats.gauge_set("membership_total", CLUSTER_A, 3)
    assert stats.snapshot() == {
        "counters": [["downstream_cx_total", [["listener", "virtualOutbound"]], 2]],
        "gauges": [["membership_total", [["cluster", CLUSTER_A[0][1]]], 3]],
        "histograms": [],
    }
    assert Stats().snapshot() == {"counters": [], "gauges": [], "histograms": []}


def test_snapshot_is_a_copy() -> None:
    stats = Stats()
    stats.inc("downstream_cx_total", OUT)
    snap = stats.snapshot()
    stats.inc("downstream_cx_total", OUT, 10)
    assert snap["counters"][0][2] == 1


def test_merge_of_one_snapshot_gives_back_the_worker_stats() -> None:
    stats = Stats()
    stats.inc("downstream_cx_total", OUT, 4)
    stats.inc("config_reload_total")
    stats.gauge_set("membership_total", CLUSTER_A, 3)
    counters, gauges, histograms = merge([stats.snapshot()])
    assert counters == dict(stats.counters)
    assert gauges == dict(stats.gauges)
    assert histograms == {}


def workers() -> list[Stats]:
    one, two, three = Stats(), Stats(), Stats()
    one.inc("downstream_cx_total", OUT, 3)
    one.inc("downstream_cx_total", IN, 1)
    one.inc("upstream_cx_connect_fail", CLUSTER_A, 2)
    one.gauge_add("downstream_cx_active", OUT, 2)
    one.gauge_set("membership_total", CLUSTER_A, 3)
    two.inc("downstream_cx_total", OUT, 5)
    two.inc("upstream_cx_connect_fail", CLUSTER_B, 7)
    two.gauge_add("downstream_cx_active", OUT, 1)
    two.gauge_add("downstream_cx_active", IN, 4)
    two.gauge_set("membership_total", CLUSTER_A, 3)
    three.inc("config_reload_total")
    three.gauge_add("downstream_cx_active", OUT, -1)
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
    counters, gauges, _ = merge(w.snapshot() for w in workers())
    assert counters == EXPECTED_COUNTERS
    assert gauges == EXPECTED_GAUGES


def test_merge_keys_are_hashable_label_tuples() -> None:
    counters, gauges, _ = merge(w.snapshot() for w in workers())
    for name, label_values in [*counters, *gauges]:
        assert isinstance(name, str)
        assert isinstance(label_values, tuple)
        assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in label_values)


def test_merge_keeps_label_sets_distinct() -> None:
    """Same name, different label values (or different label names): never summed together."""
    one, two = Stats(), Stats()
    one.inc("m", labels(a="1"))
    two.inc("m", labels(a="2"))
    two.inc("m", labels(b="1"))
    two.inc("m")
    counters = merge([one.snapshot(), two.snapshot()]).counters
    assert counters == {
        ("m", (("a", "1"),)): 1,
        ("m", (("a", "2"),)): 1,
        ("m", (("b", "1"),)): 1,
        ("m", ()): 1,
    }


def test_merge_of_nothing_and_of_empty_snapshots() -> None:
    assert merge([]) == ({}, {}, {})
    assert merge([Stats().snapshot(), {}]) == ({}, {}, {})


def test_snapshot_survives_json_and_merges_to_the_same_totals() -> None:
    snapshots = [w.snapshot() for w in workers()]
    wire = [json.loads(json.dumps(s)) for s in snapshots]
    assert merge(wire) == merge(snapshots) == (EXPECTED_COUNTERS, EXPECTED_GAUGES, {})


def test_json_round_trip_with_istio_labels() -> None:
    stats = Stats()
    istio = labels(**dict.fromkeys(ISTIO_TCP_LABELS, "unknown"))
    stats.inc("istio_tcp_sent_bytes_total", istio, 12345)
    stats.inc("istio_tcp_connections_opened_total", istio)
    wire = json.loads(json.dumps(stats.snapshot()))
    counters = merge([wire, wire]).counters
    assert counters == {
        ("istio_tcp_sent_bytes_total", istio): 24690,
        ("istio_tcp_connections_opened_total", istio): 2,
    }
    assert [k for k, _ in istio] == list(ISTIO_TCP_LABELS)


def test_help_text_for_every_known_name() -> None:
    assert not set(COUNTER_HELP) & set(GAUGE_HELP)
    for help_text in [*COUNTER_HELP.values(), *GAUGE_HELP.values()]:
        assert help_text and "\n" not in help_text


# --- histograms ----------------------------------------------------------------------------

DURATION = "istio_request_duration_milliseconds"
BOUNDS = HISTOGRAMS[DURATION].bounds


def buckets_of(stats: Stats, name: str = DURATION, label_values=OUT) -> list[int]:
    """Per-bucket (not cumulative) counts, +Inf last."""
    _bounds, row = stats.histograms[(name, label_values)]
    return row[:-1]


def test_histogram_table_is_well_formed() -> None:
    assert set(HISTOGRAMS) == {
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    }
    families = {n.removesuffix("_total") for n in COUNTER_HELP} | set(GAUGE_HELP)
    for name, spec in HISTOGRAMS.items():
        assert name not in families
        assert spec.help and "\n" not in spec.help
        assert list(spec.bounds) == sorted(set(spec.bounds)), name


def test_istio_duration_buckets() -> None:
    assert BOUNDS == (
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
        60000, 300000, 600000, 1800000, 3600000,
    )  # fmt: skip


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


def test_observe_accumulates_sum_and_series() -> None:
    stats = Stats()
    for value in (3, 3, 40.5):
        stats.observe(DURATION, OUT, value)
    stats.observe(DURATION, IN, 1)
    _bounds, row = stats.histograms[(DURATION, OUT)]
    assert row[-1] == 46.5
    assert sum(row[:-1]) == 3
    assert sum(buckets_of(stats, label_values=IN)) == 1


def test_observe_of_an_undeclared_histogram_fails_loudly() -> None:
    with pytest.raises(KeyError, match="not declared"):
        Stats().observe("no_such_histogram", OUT, 1)


def test_histogram_snapshot_shape_and_copy() -> None:
    stats = Stats()
    stats.observe("istio_request_bytes", OUT, 10)
    stats.observe("istio_request_bytes", OUT, 2000)
    snap = stats.snapshot()
    ((name, label_values, bounds, buckets, total, count),) = snap["histograms"]
    assert (name, label_values) == ("istio_request_bytes", [["listener", "virtualOutbound"]])
    assert bounds == list(HISTOGRAMS["istio_request_bytes"].bounds)
    assert len(buckets) == len(bounds) + 1
    assert buckets[bounds.index(10)] == 1 and buckets[bounds.index(2500)] == 1
    assert (total, count) == (2010, 2)
    stats.observe("istio_request_bytes", OUT, 10)
    assert snap["histograms"][0][3][bounds.index(10)] == 1


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
    out = merged.histograms[(DURATION, OUT)]
    assert out.bounds == BOUNDS
    expected = [0] * (len(BOUNDS) + 1)
    expected[0], expected[BOUNDS.index(10)], expected[BOUNDS.index(250)] = 1, 3, 1
    expected[-1] = 1
    assert out.buckets == expected
    assert (out.sum, out.count) == (0.5 + 7 * 3 + 4000000 + 120, 6)
    assert out.cumulative()[-1] == out.count
    assert merged.histograms[(DURATION, IN)].count == 1
    # Merging did not alias a worker's lists.
    assert buckets_of(one)[BOUNDS.index(10)] == 2


def test_merge_leaves_out_a_series_with_other_bounds() -> None:
    stats = Stats()
    stats.observe(DURATION, OUT, 7)
    good = stats.snapshot()
    odd = {"histograms": [[DURATION, [["listener", "virtualOutbound"]], [1, 2], [1, 0, 0], 1, 1]]}
    merged = merge([good, odd])
    assert merged.histograms[(DURATION, OUT)].count == 1
    assert merged.histograms[(DURATION, OUT)].bounds == BOUNDS


def test_cumulative_counts() -> None:
    data = HistogramData((1, 2, 3), [2, 0, 1, 4], 0.0, 7)
    assert data.cumulative() == [2, 2, 3, 7]


def test_request_counters_have_help() -> None:
    for name in (
        "istio_requests_total",
        "upstream_rq_total",
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_rq_timeout",
        "upstream_rq_per_try_timeout",
        "upstream_rq_pending_overflow",
        "downstream_rq_total",
        *(f"downstream_rq_{n}xx" for n in range(1, 6)),
        "upstream_cx_http1_total",
        "upstream_cx_pool_reuse",
    ):
        assert COUNTER_HELP[name], name
    assert COUNTER_HELP["istio_requests_total"] == "Requests (Istio standard metric)"
