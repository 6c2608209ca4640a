"""The parsers turn what the load generators print into the numbers in the table."""

from __future__ import annotations

import pytest

from bench import load

# Printed by h2load 1.52 (Debian 12) for a short run; the per-request log is tab separated.
H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 1s of warm-up time and 6s of main duration for measurements.
Application protocol: http/1.1

finished in 6.00s, 999.67 req/s, 1.14MB/s
requests: 5998 total, 6014 started, 5998 done, 5996 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 5995 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 6.83MB (7163574) total, 570.00KB (583680) headers (space savings 0.00%), 5.86MB (6141952) data
"""  # noqa: E501


def test_h2load_summary():
    got = load.parse_h2load(H2LOAD_OUTPUT)
    assert got["seconds"] == 6.0
    assert got["rate"] == 999.67
    assert got["total"] == 5998
    assert got["ok_2xx"] == 5995
    # 2 failed + 1 answer that "succeeded" with a 4xx
    assert got["errors"] == 3


def test_a_late_answer_in_a_timed_run_is_not_a_negative_error():
    # seen with -D 5: one response more in the status counts than in "succeeded"
    text = H2LOAD_OUTPUT.replace("5995 2xx, 0 3xx, 1 4xx", "5997 2xx, 0 3xx, 0 4xx")
    got = load.parse_h2load(text)
    assert (got["ok_2xx"], got["errors"]) == (5996, 2)


def test_h2load_summary_in_milliseconds():
    text = H2LOAD_OUTPUT.replace("finished in 6.00s", "finished in 233.22ms")
    assert load.parse_h2load(text)["seconds"] == pytest.approx(0.23322)


def test_h2load_without_a_summary_is_an_error():
    with pytest.raises(ValueError):
        load.parse_h2load("-D: value error 1.5\n")


def test_latency_log_keeps_the_2xx_durations():
    text = (
        "1795694972003250\t200\t219022\n"
        "1795694972003238\t503\t1200\n"
        "1795694972228702\t200\t3759\n"
        "garbage\n"
    )
    assert load.parse_latency_log(text) == [219022, 3759]


def test_percentiles_are_nearest_rank():
    values = list(range(1, 1001))  # 1..1000
    assert load.percentile(values, 50) == 500
    assert load.percentile(values, 99) == 990
    assert load.percentile(values, 99.9) == 999
    assert load.percentile(values, 100) == 1000
    assert load.percentile([7], 99.9) == 7
    with pytest.raises(ValueError):
        load.percentile([], 50)


def test_latency_percentiles_in_milliseconds_from_unsorted_microseconds():
    durations = [5000, 1000, 3000, 2000, 4000]
    got = load.latency_percentiles(durations)
    assert got == {"p50_ms": 3.0, "p90_ms": 5.0, "p99_ms": 5.0, "p99.9_ms": 5.0}


def test_h2load_rate_is_spread_over_the_connections():
    argv = load.h2load_argv("http://x:8080/", 16, 1000, 6, 1, "/tmp/log")
    assert argv[argv.index("--rps") + 1] == "62.5"  # per client: 16 x 62.5 = 1000
    assert argv[argv.index("-D") + 1] == "6"
    assert argv[argv.index("--warm-up-time") + 1] == "1"
    assert "--h1" in argv and argv[-1] == "http://x:8080/"
    no_warmup = load.h2load_argv("http://x:8080/", 4, 1000, 1, 0, "/tmp/log")
    assert "--warm-up-time" not in no_warmup
    assert no_warmup[no_warmup.index("--rps") + 1] == "250"


def test_wrk_counts_non_2xx_as_errors_not_as_rate():
    line = (
        'WRK_JSON {"requests": 10100, "duration_us": 5000000, "bytes": 1, "connect": 3, '
        '"read": 2, "write": 0, "status": 100, "timeout": 0, "latency_p50_us": 1, '
        '"latency_p99_us": 2, "latency_max_us": 3}'
    )
    got = load.parse_wrk("Running 5s test\n" + line + "\n")
    assert got["rate"] == 2000.0  # (10100 - 100) / 5 s
    assert got["errors"] == 105
    assert got["attempts"] == 10105
    with pytest.raises(ValueError):
        load.parse_wrk("unable to connect\n")


def test_wrk_close_adds_the_header():
    assert "Connection: close" in load.wrk_argv("http://x/", 16, 5, close=True)
    assert "-H" not in load.wrk_argv("http://x/", 16, 5, close=False)


def test_bulk_short_transfer_has_no_rate():
    size = 256 * 2**20
    ok = load.parse_bulk(f'{{"bytes": {size}, "expected": {size}, "seconds": 2.0}}', size)
    assert ok["mibps"] == 128.0 and ok["seconds"] == 2.0
    short = load.parse_bulk(f'{{"bytes": 5, "expected": {size}, "seconds": 2.0}}', size)
    assert short["mibps"] is None and short["seconds"] is None
