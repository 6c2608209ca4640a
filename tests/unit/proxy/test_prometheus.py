"""Prometheus text rendering of merged stats, checked with prometheus-client's own parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.prometheus import MergedStatsCollector, render
from proxy.stats import COUNTER_HELP, GAUGE_HELP, ISTIO_TCP_LABELS, Stats, labels, merge

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


def sample_snapshot():
    stats = Stats()
    stats.inc("downstream_cx_total", OUT, 7)
    stats.inc("downstream_cx_total", IN, 2)
    stats.inc("downstream_cx_refused", OUT, 1)
    stats.inc("upstream_cx_connect_fail", CLUSTER, 3)
    stats.inc("outlier_detection_ejections_total", CLUSTER, 1)
    stats.inc("istio_tcp_connections_opened_total", ISTIO, 5)
    stats.inc("istio_tcp_sent_bytes_total", ISTIO, 123456789)
    stats.gauge_add("downstream_cx_active", OUT, 4)
    stats.gauge_add("upstream_cx_active", CLUSTER, 4)
    stats.gauge_set("membership_total", CLUSTER, 3)
    stats.gauge_set("membership_healthy", CLUSTER, 2)
    stats.gauge_set("outlier_detection_ejections_active", CLUSTER, 1)
    counters, gauges = merge([stats.snapshot()])
    counters[("config_reload_total", ())] = 2
    counters[("config_reload_rejected", ())] = 0
    return counters, gauges


def test_render_is_valid_exposition_text() -> None:
    text = render(sample_snapshot()).decode()
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    assert families
    assert {f.type for f in families} == {"counter", "gauge"}


def test_empty_snapshot_renders_nothing() -> None:
    assert render(({}, {})) == b""


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
    families = parse(({}, {("downstream_cx_active", OUT): -1, ("upstream_cx_active", ()): 0}))
    assert samples(families["downstream_cx_active"]) == {
        ("downstream_cx_active", (("listener", "virtualOutbound"),)): -1
    }
    assert samples(families["upstream_cx_active"]) == {("upstream_cx_active", ()): 0}


def test_help_text_for_known_names() -> None:
    families = parse(sample_snapshot())
    for name, help_text in COUNTER_HELP.items():
        family_name = name.removesuffix("_total")
        if family_name in families:
            assert families[family_name].documentation == help_text
    for name, help_text in GAUGE_HELP.items():
        assert families[name].documentation == help_text
    assert families["downstream_cx"].documentation == COUNTER_HELP["downstream_cx_total"]
    assert families["config_reload"].documentation == COUNTER_HELP["config_reload_total"]


def test_every_known_name_renders_with_its_help() -> None:
    counters = {(name, OUT): 1 for name in COUNTER_HELP}
    gauges = {(name, OUT): 1 for name in GAUGE_HELP}
    families = parse((counters, gauges))
    assert len(families) == len(COUNTER_HELP) + len(GAUGE_HELP)
    for name, help_text in COUNTER_HELP.items():
        assert families[name.removesuffix("_total")].documentation == help_text
    for name, help_text in GAUGE_HELP.items():
        assert families[name].documentation == help_text
    text = render((counters, gauges)).decode()
    for help_text in [*COUNTER_HELP.values(), *GAUGE_HELP.values()]:
        assert help_text in text


def test_unknown_names_get_their_name_as_help() -> None:
    families = parse(({("custom_thing_total", ()): 1}, {("custom_level", ()): 2}))
    assert families["custom_thing"].documentation == "custom_thing_total"
    assert families["custom_level"].documentation == "custom_level"


def test_label_values_are_escaped() -> None:
    tricky = 'a "quoted" \\ back\nslash'
    families = parse(({("downstream_cx_total", labels(listener=tricky)): 1}, {}))
    (sample,) = families["downstream_cx"].samples
    assert sample.labels == {"listener": tricky}


def test_render_of_merged_json_snapshots_matches_the_sums() -> None:
    one, two = Stats(), Stats()
    one.inc("upstream_cx_total", CLUSTER, 3)
    two.inc("upstream_cx_total", CLUSTER, 4)
    one.gauge_add("upstream_cx_active", CLUSTER, 1)
    two.gauge_add("upstream_cx_active", CLUSTER, 2)
    wire = [json.loads(json.dumps(s.snapshot())) for s in (one, two)]
    families = parse(merge(wire))
    assert samples(families["upstream_cx"]) == {("upstream_cx_total", tuple(CLUSTER)): 7}
    assert samples(families["upstream_cx_active"]) == {("upstream_cx_active", tuple(CLUSTER)): 3}


def test_collector_reads_the_current_snapshot_at_collect_time() -> None:
    state = {"value": 1}
    collector = MergedStatsCollector(lambda: ({("downstream_cx_total", OUT): state["value"]}, {}))
    first = [s.value for f in collector.collect() for s in f.samples]
    state["value"] = 5
    second = [s.value for f in collector.collect() for s in f.samples]
    assert (first, second) == ([1], [5])


def test_counters_then_gauges_each_sorted_by_name() -> None:
    counters, gauges = sample_snapshot()
    text = render((counters, gauges)).decode()
    # Counter HELP lines carry the _total name in the text format.
    help_names = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    counter_names = [
        name.removesuffix("_total") + "_total" for name in sorted({name for name, _ in counters})
    ]
    gauge_names = sorted({name for name, _ in gauges})
    assert help_names == counter_names + gauge_names
