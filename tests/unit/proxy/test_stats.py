"""Per-worker Stats and the supervisor's merge of worker snapshots."""

from __future__ import annotations

import json

from proxy.stats import COUNTER_HELP, GAUGE_HELP, ISTIO_TCP_LABELS, Stats, labels, merge

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
    }
    assert Stats().snapshot() == {"counters": [], "gauges": []}


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
    counters, gauges = merge([stats.snapshot()])
    assert counters == dict(stats.counters)
    assert gauges == dict(stats.gauges)


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
    counters, gauges = merge(w.snapshot() for w in workers())
    assert counters == EXPECTED_COUNTERS
    assert gauges == EXPECTED_GAUGES


def test_merge_keys_are_hashable_label_tuples() -> None:
    counters, gauges = merge(w.snapshot() for w in workers())
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
    counters, _ = merge([one.snapshot(), two.snapshot()])
    assert counters == {
        ("m", (("a", "1"),)): 1,
        ("m", (("a", "2"),)): 1,
        ("m", (("b", "1"),)): 1,
        ("m", ()): 1,
    }


def test_merge_of_nothing_and_of_empty_snapshots() -> None:
    assert merge([]) == ({}, {})
    assert merge([Stats().snapshot(), {}]) == ({}, {})


def test_snapshot_survives_json_and_merges_to_the_same_totals() -> None:
    snapshots = [w.snapshot() for w in workers()]
    wire = [json.loads(json.dumps(s)) for s in snapshots]
    assert merge(wire) == merge(snapshots) == (EXPECTED_COUNTERS, EXPECTED_GAUGES)


def test_json_round_trip_with_istio_labels() -> None:
    stats = Stats()
    istio = labels(**dict.fromkeys(ISTIO_TCP_LABELS, "unknown"))
    stats.inc("istio_tcp_sent_bytes_total", istio, 12345)
    stats.inc("istio_tcp_connections_opened_total", istio)
    wire = json.loads(json.dumps(stats.snapshot()))
    counters, _ = merge([wire, wire])
    assert counters == {
        ("istio_tcp_sent_bytes_total", istio): 24690,
        ("istio_tcp_connections_opened_total", istio): 2,
    }
    assert [k for k, _ in istio] == list(ISTIO_TCP_LABELS)


def test_help_text_for_every_known_name() -> None:
    assert not set(COUNTER_HELP) & set(GAUGE_HELP)
    for help_text in [*COUNTER_HELP.values(), *GAUGE_HELP.values()]:
        assert help_text and "\n" not in help_text
