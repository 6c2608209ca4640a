"""The load generators' command lines and the parsers of what they print. Pure functions: the
harness runs the argv inside a client pod, and these turn the output into numbers.

- wrk (closed loop): saturation, new connections (``Connection: close``) and keep-alive.
- h2load --h1 (open loop, ``--rps`` per client): latency at a fixed rate. It prints no
  percentiles, so it writes one line per request (``--log-file``) and we compute them.
- h2load over HTTP/2 cleartext (closed loop, many streams on one connection): saturation.
- bulk.py: one stream, timed until the last byte.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def wrk_argv(url: str, connections: int, duration: float, close: bool) -> list[str]:
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s"]
    argv += ["-s", str(WRK_SCRIPT)]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def parse_wrk(stdout: str) -> dict:
    """wrk's totals (the JSON line wrk_report.lua prints): the rate of good answers, and the
    errors (socket errors plus non-2xx/3xx answers) out of the attempts."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise ValueError("no WRK_JSON line in wrk's output")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    good = raw["requests"] - raw["status"]
    return {
        "rate": good / (raw["duration_us"] / 1e6),
        "good": good,
        "errors": socket_errors + raw["status"],
        "attempts": raw["requests"] + socket_errors,
        "raw": raw,
    }


def h2load_argv(
    url: str, connections: int, rate: float, duration: int, warmup: int, log_file: str
) -> list[str]:
    """An open-loop HTTP/1.1 load of ``rate`` requests/s in all, spread over ``connections``
    (``--rps`` is per client), one request in flight per connection."""
    argv = ["h2load", "--h1", "-c", str(connections), "-t", "1", "-m", "1"]
    argv += ["--rps", f"{rate / connections:g}", "-D", str(duration)]
    if warmup > 0:
        argv += ["--warm-up-time", str(warmup)]
    return [*argv, "--log-file", log_file, url]


def h2load_streams_argv(url: str, streams: int, duration: int) -> list[str]:
    """A closed-loop HTTP/2 cleartext load (prior knowledge): one connection with ``streams``
    requests in flight, as a gRPC or service-to-service client multiplexes, for saturation
    throughput and CPU per request."""
    argv = ["h2load", "-c", "1", "-t", "1", "-m", str(streams), "-D", str(duration)]
    return [*argv, url]


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_h2load(stdout: str) -> dict:
    """h2load's summary: the achieved rate over the measured time and the request counts."""
    finished = _FINISHED.search(stdout)
    requests = _REQUESTS.search(stdout)
    if finished is None or requests is None:
        raise ValueError("h2load printed no summary")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    total, _started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    status = _STATUS.search(stdout)
    # In a timed run (-D) a response that lands after the window can be in the status counts
    # but not in "succeeded": count 2xx among the succeeded only.
    ok_2xx = min(int(status[1]), succeeded) if status else succeeded
    return {
        "seconds": seconds,
        "rate": float(finished[3]),
        "total": total,
        "done": done,
        "succeeded": succeeded,
        "ok_2xx": ok_2xx,
        "errors": failed + errored + timeout + (succeeded - ok_2xx),
    }


def parse_latency_log(text: str) -> list[int]:
    """Durations in microseconds of the 2xx answers in an h2load ``--log-file``
    (columns: start time µs since epoch, status, µs until the end of the response)."""
    durations = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].startswith("2"):
            durations.append(int(parts[2]))
    return durations


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below
    it, so always a latency some request saw, never an interpolation. The rank is rounded
    before ``ceil`` because 99.9 / 100 * 1000 is 999.0000000000001 in floating point."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(round(q / 100 * len(sorted_values), 9)))
    return sorted_values[rank - 1]


def latency_percentiles(durations_us: Iterable[int], qs=PERCENTILES) -> dict[str, float]:
    """{"p50_ms": ..., "p99.9_ms": ...} from per-request durations in microseconds."""
    ordered = sorted(durations_us)
    return {f"p{q:g}_ms": percentile(ordered, q) / 1000 for q in qs}


def bulk_argv(python: str, script: str, mode: str, host: str, port: int, size: int) -> list[str]:
    return [python, script, mode, host, str(port), str(size)]


def parse_bulk(stdout: str, size: int) -> dict:
    """bulk.py's JSON line: MiB/s and wall seconds, or None when not every byte arrived."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise ValueError("bulk.py printed nothing")
    raw = json.loads(lines[-1])
    ok = raw["bytes"] == size
    return {
        "mibps": raw["bytes"] / 2**20 / raw["seconds"] if ok else None,
        "seconds": raw["seconds"] if ok else None,
        "raw": raw,
    }


def stat_sum(text: str, pattern: str) -> int:
    """The sum of the counters in an admin ``/stats`` answer (``name: value`` lines, Envoy's
    and Detour's alike) whose name matches ``pattern`` (a regular expression)."""
    matcher = re.compile(pattern)
    total = 0
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if sep and matcher.search(name.strip()) and value.strip().isdigit():
            total += int(value)
    return total
