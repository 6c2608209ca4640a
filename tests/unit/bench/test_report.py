"""Summary and ratio math: medians over passes, ratios against direct and against the Envoy
row of the same layer, what counts as a harness failure."""

from __future__ import annotations

import pytest

from bench import report


def sample(row, group, number, **values):
    return {"row": row, "group": group, "pass": number, "values": values, "errors": 0,
            "attempts": 1, "noise": {"foreign_cores": 0.0, "steal_cores": 0.0}}  # fmt: skip


SAMPLES = [
    sample("direct", "keepalive", 1, keepalive_rps=9000.0, lat_c16_p99_ms=1.0),
    sample("direct", "keepalive", 2, keepalive_rps=11000.0, lat_c16_p99_ms=2.0),
    sample("direct", "keepalive", 3, keepalive_rps=10000.0, lat_c16_p99_ms=1.5),
    sample("envoy-tcp", "keepalive", 1, keepalive_rps=5000.0, keepalive_cpu_us=20.0),
    sample("envoy-tcp", "keepalive", 2, keepalive_rps=4000.0, keepalive_cpu_us=None),
    sample("detour-l4", "keepalive", 1, keepalive_rps=6000.0, keepalive_cpu_us=15.0),
    sample("detour-l4", "keepalive", 2, keepalive_rps=2000.0, keepalive_cpu_us=17.0),
    sample("detour-l4", "keepalive", 3, keepalive_rps=6500.0, keepalive_cpu_us=16.0),
]


def test_stat_is_median_and_range_of_the_passes_with_a_number():
    assert report.stat([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert report.stat([None, None]) is None
    assert report.stat([1.0, 4.0])["median"] == 2.5


def test_summarize_groups_by_row_and_key():
    summary = report.summarize(SAMPLES)
    assert summary["direct"]["keepalive_rps"]["median"] == 10000.0
    assert summary["detour-l4"]["keepalive_rps"] == {
        "median": 6000.0, "min": 2000.0, "max": 6500.0, "n": 3,
    }  # fmt: skip
    assert summary["envoy-tcp"]["keepalive_cpu_us"]["n"] == 1  # the None pass is left out


def test_ratios_against_direct_and_against_envoy_of_the_same_layer():
    summary = report.summarize(SAMPLES)
    assert report.ratio(summary, "detour-l4", "direct", "keepalive_rps") == 0.6
    assert report.ratio(summary, "detour-l4", "envoy-tcp", "keepalive_rps") == pytest.approx(
        6000 / 4500
    )
    # No number on either side: no ratio (never 0 or inf).
    assert report.ratio(summary, "detour-l4", "direct", "keepalive_cpu_us") is None
    assert report.ratio(summary, "detour-l4", None, "keepalive_rps") is None
    table = report.ratios(summary)
    assert table["detour-l4"]["keepalive_cpu_us"]["vs_envoy"] == pytest.approx(16 / 20)
    assert table["envoy-tcp"]["keepalive_cpu_us"]["vs_envoy"] == 1.0


def test_added_latency_is_the_difference_to_direct():
    summary = {
        "direct": {"lat_c16_p99_ms": {"median": 1.5}},
        "envoy-tcp": {"lat_c16_p99_ms": {"median": 2.25}},
        "pproxy": {},
    }
    assert report.added_latency(summary, "envoy-tcp", "lat_c16_p99_ms") == 0.75
    assert report.added_latency(summary, "pproxy", "lat_c16_p99_ms") is None


def test_ebpf_capture_is_compared_on_the_latency_it_adds():
    summary = {
        "direct": {"lat_c16_p99_ms": {"median": 1.0}},
        "detour-l4": {"lat_c16_p99_ms": {"median": 3.0}},  # adds 2.0
        "detour-ebpf": {"lat_c16_p99_ms": {"median": 2.5}},  # adds 1.5
    }
    assert report.capture_ratio(summary) == 0.75
    summary["detour-l4"]["lat_c16_p99_ms"]["median"] = 1.0  # adds nothing: no ratio
    assert report.capture_ratio(summary) is None


def test_a_group_without_any_number_is_a_harness_failure():
    samples = [
        sample("direct", "bulk", 1, upload_mibps=None, download_mibps=100.0),
        sample("pproxy", "bulk", 1, upload_mibps=None, download_mibps=None),
    ]
    expected = {"direct": ("bulk",), "pproxy": ("bulk", "memory")}
    assert report.missing_numbers(samples, expected) == ["pproxy bulk", "pproxy memory"]


def test_disturbed_samples_are_named():
    quiet = sample("direct", "newconn", 1, newconn_rps=1.0)
    noisy = sample("envoy-tcp", "newconn", 2, newconn_rps=1.0)
    noisy["noise"] = {"foreign_cores": 0.9, "steal_cores": 0.0}
    stolen = sample("detour-l4", "bulk", 1, upload_mibps=1.0)
    stolen["noise"] = {"foreign_cores": 0.0, "steal_cores": 0.5}
    marks = report.disturbed([quiet, noisy, stolen])
    assert len(marks) == 2
    assert marks[0].startswith("newconn envoy-tcp pass 2")
    assert marks[1].startswith("bulk detour-l4 pass 1")


def test_markdown_has_a_row_per_proxy_and_says_why_a_row_was_skipped():
    summary = report.summarize(SAMPLES)
    meta = {
        "started": "2026-11-26 12:00 UTC", "passes": 3, "cpu_model": "cpu", "cpus": 2,
        "kernel": "6", "loadavg_start": [0.1, 0.2, 0.3], "loadavg_end": [0.4, 0.5, 0.6],
        "rows": ["direct", "detour-l4", "envoy-tcp"], "skipped": {"detour-http": "no router"},
        "settings": {"latency_connections": [16], "hold_steps": [1000, 9000]},
        "versions": {"envoy": "1.40.0"},
    }  # fmt: skip
    text = report.markdown(summary, meta, SAMPLES)
    lines = text.splitlines()
    detour = next(line for line in lines if line.startswith("| Detour L4 passthrough |"))
    assert "16.0 (15.0-17.0)" in detour  # CPU µs/req: median (min-max)
    assert any("Detour HTTP router | skipped: no router" in line for line in lines)
    ratio_line = next(line for line in lines if line.startswith("| detour-l4 |"))
    assert "0.80" in ratio_line  # CPU vs Envoy
    assert "envoy 1.40.0" in text


MTLS_SAMPLES = [
    sample("detour-mtls", "keepalive", 1, keepalive_cpu_us=260.0, keepalive_cpu_client_us=120.0,
           keepalive_cpu_server_us=140.0),
    sample("envoy-mtls", "keepalive", 1, keepalive_cpu_us=200.0, keepalive_cpu_client_us=100.0,
           keepalive_cpu_server_us=100.0),
    sample("detour-mtls-tcp", "newconn", 1, newconn_rps=300.0, newconn_handshakes_per_req=1.01),
    sample("envoy-mtls-tcp", "newconn", 1, newconn_rps=1000.0, newconn_handshakes_per_req=1.0),
]  # fmt: skip


def test_mtls_targets_compare_with_the_envoy_pair():
    got = {t["row"]: t for t in report.targets(report.summarize(MTLS_SAMPLES))}
    cpu, handshakes = got["detour-mtls"], got["detour-mtls-tcp"]
    assert (cpu["reference"], cpu["ratio"], cpu["met"]) == ("envoy-mtls", 1.3, True)
    assert handshakes["ratio"] == pytest.approx(0.3)
    assert not handshakes["met"]
    assert handshakes["miss"] == pytest.approx(0.7 / 0.3)  # it needs 2.33 times its rate
    # No Envoy pair ran: no target, rather than a made-up ratio.
    assert report.targets(report.summarize(MTLS_SAMPLES[:1])) == []


def test_the_mtls_table_shows_both_proxies_and_the_verdicts():
    meta = {"rows": ["direct", *report.MTLS_ROWS]}
    lines = report._mtls_table(report.summarize(MTLS_SAMPLES), meta["rows"])
    detour = next(line for line in lines if line.startswith("| detour-mtls |"))
    assert "260 (120 + 140)" in detour and "| 1.30 |" in detour
    text = "\n".join(lines)
    assert "detour-mtls / envoy-mtls = 1.30 (target ≤ 1.30): **met**" in text
    assert "needs 2.33 times its rate" in text
    assert "not a handshake rate" not in text
    pooled = [*MTLS_SAMPLES[:3], sample("envoy-mtls-tcp", "newconn", 1, newconn_rps=1.0)]
    pooled[2] = sample("detour-mtls-tcp", "newconn", 1, newconn_rps=9.0,
                       newconn_handshakes_per_req=0.01)  # fmt: skip
    warned = "\n".join(report._mtls_table(report.summarize(pooled), meta["rows"]))
    assert "detour-mtls-tcp: only 0.01 mTLS handshakes per new connection" in warned
