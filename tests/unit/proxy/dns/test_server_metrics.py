"""The DNS proxy's metrics as a scrape shows them: the upstream latency is a real Prometheus
histogram (it used to be hand-rolled from counters, which Prometheus read as
``dns_upstream_latency_ms_bucket_total`` with no ``_sum`` or ``_count``)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families

import proxy.dns.server
from proxy.admin.prometheus import render
from proxy.config.model import Mesh
from proxy.dns.codec import Rcode, a_record, build_answer, parse_query
from proxy.dns.resolvconf import ResolvConf
from proxy.dns.server import DNS_UPSTREAM_LATENCY_MS, DnsProxy
from proxy.series import Stats
from proxy.stats import merge


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def query(name: str, ident: int = 0x1234) -> bytes:
    """A recursive A query for ``name``."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + b"\0\1\0\1"


# (seconds the upstream takes, whether it answers), per upstream asked, in order: the first
# resolver times out (exactly on the 2000 ms bound, then above the last bound), the second
# answers quickly.
TRIES = [(2.0, False), (0.003, True), (2.5, False), (0.0004, True)]
OBSERVED_MS = [2000, 3, 2500, 0.4]


def scrape(monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    """Two forwarded queries through the real DnsProxy (upstream exchanges faked), then the
    Prometheus text of the stats they left, and its parsed families."""
    clock, stats, tries = FakeClock(), Stats(), list(TRIES)

    async def fake_udp_exchange(server: str, data: bytes) -> bytes | None:
        seconds, answers = tries.pop(0)
        clock.now += seconds
        if not answers:
            return None
        asked = parse_query(data)
        record = a_record(asked.question.name, "192.0.2.10", 60)
        return build_answer(asked, Rcode.NOERROR, [record], authoritative=False)

    monkeypatch.setattr(proxy.dns.server, "_udp_exchange", fake_udp_exchange)
    resolv = ResolvConf(nameservers=("192.0.2.1", "192.0.2.2"), search=())
    dns = DnsProxy(Mesh(), resolv, stats, clock=clock)
    for name in ("one.example.org", "two.example.org"):
        assert asyncio.run(dns.answer(query(name), "udp")) is not None
    assert tries == []
    text = render(merge([stats.snapshot()])).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def test_upstream_latency_is_a_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    text, families = scrape(monkeypatch)
    family = families["dns_upstream_latency_ms"]
    assert family.type == "histogram"
    assert family.documentation == DNS_UPSTREAM_LATENCY_MS.help
    assert "# TYPE dns_upstream_latency_ms histogram" in text
    assert "dns_upstream_latency_ms_bucket_total" not in text
    assert "dns_upstream_latency_ms_sum_total" not in text


def test_upstream_latency_buckets_are_cumulative_with_sum_and_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _text, families = scrape(monkeypatch)
    samples = families["dns_upstream_latency_ms"].samples
    buckets = {float(s.labels["le"]): s.value for s in samples if s.name.endswith("_bucket")}
    (total,) = [s.value for s in samples if s.name == "dns_upstream_latency_ms_sum"]
    (count,) = [s.value for s in samples if s.name == "dns_upstream_latency_ms_count"]
    assert list(buckets) == [1, 5, 10, 50, 100, 500, 1000, 2000, float("inf")]
    # Cumulative: each bucket holds every observation up to its bound, +Inf all of them.
    assert buckets == {bound: sum(ms <= bound for ms in OBSERVED_MS) for bound in buckets}
    assert buckets[2000] == 3 and buckets[float("inf")] == count == len(OBSERVED_MS)
    assert total == pytest.approx(sum(OBSERVED_MS))
    assert all(set(s.labels) <= {"le"} for s in samples), "no labels but le"


def test_answers_are_counted_next_to_the_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    _text, families = scrape(monkeypatch)
    answers = {s.labels["source"]: s.value for s in families["dns_answers"].samples}
    queries = {s.labels["transport"]: s.value for s in families["dns_queries"].samples}
    assert (answers, queries) == ({"upstream": 2}, {"udp": 2})
