"""Rows, their metric groups and the interleaved order of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scenarios
from bench.lab import max_held
from bench.measure import parse_stat_cpu, parse_status_rss_kb


def test_layers_decide_the_groups():
    by = scenarios.BY_NAME
    assert "bulk" not in by["envoy-http"].groups  # L7 rows: no raw byte stream
    assert "memory" not in by["direct"].groups  # no proxy, no proxy memory
    assert set(scenarios.GROUPS) - set(by["detour-l4"].groups) == {"h2"}  # L4: no HTTP/2
    # HTTP/2 runs where a client can speak it: direct (the origin's h2 port) and L7 proxies
    # that take it; mitmproxy's transparent mode is not one of them here.
    assert "h2" in by["direct"].groups and "h2" in by["detour-http"].groups
    assert "h2" in by["envoy-http"].groups and "h2" not in by["mitmproxy"].groups


def test_row_arguments_reach_the_sidecar_after_the_run_wide_ones():
    from bench.peers import VenvPaths
    from bench.peers.registry import launch_for

    venv = VenvPaths(Path("/nonexistent"))
    row = scenarios.BY_NAME["detour-l4-c2"]
    argv = launch_for(row, venv, "detour-proxy", {}, ("--concurrency", "1")).argv
    assert argv[-2:] == ("--concurrency", "2")  # argparse: the later flag wins


def test_envoy_reference_is_the_same_layer():
    by = scenarios.BY_NAME
    assert scenarios.envoy_reference(by["haproxy-tcp"]) == "envoy-tcp"
    assert scenarios.envoy_reference(by["mitmproxy"]) == "envoy-http"
    assert scenarios.envoy_reference(by["direct"]) is None


def test_select_keeps_direct_and_the_canonical_order():
    rows = scenarios.select(["envoy-tcp", "detour-l4"])
    assert [r.name for r in rows] == ["direct", "detour-l4", "envoy-tcp"]
    assert scenarios.select(None) == scenarios.ROWS
    with pytest.raises(ValueError, match="nope"):
        scenarios.select(["nope"])


def test_schedule_interleaves_rows_within_each_group_and_pass():
    rows = scenarios.select(["envoy-http"])  # direct (no memory) and an L7 row (no bulk)
    order = [(n, g, r.name) for n, g, r in scenarios.schedule(rows, 2, ("bulk", "memory"))]
    assert order == [
        (1, "bulk", "direct"),
        (1, "memory", "envoy-http"),
        (2, "bulk", "direct"),
        (2, "memory", "envoy-http"),
    ]


def test_cpu_time_is_read_after_the_last_parenthesis():
    # A comm may hold spaces and ')': utime=250 and stime=50 ticks follow it.
    fields = ["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30
    line = "4242 (we ird) name) " + " ".join(fields)
    assert parse_stat_cpu(line) == pytest.approx(300 / 100)  # SC_CLK_TCK is 100 on Linux


def test_rss_is_vmrss():
    assert parse_status_rss_kb("Name:\tenvoy\nVmHWM:\t 9 kB\nVmRSS:\t   68628 kB\n") == 68628
    assert parse_status_rss_kb("Name:\tkthreadd\n") == 0


def test_held_connections_fit_two_sockets_each_in_the_descriptor_limit():
    assert max_held(20000) == 9000  # this sandbox: root cannot raise the hard limit
    assert max_held(1 << 20) == 10000
    assert max_held(-1) == 10000  # unlimited
    assert max_held(2000) == 1000
