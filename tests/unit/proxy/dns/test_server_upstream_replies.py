"""What the DNS proxy does with an upstream reply it cannot use: SERVFAIL to the client,
counted, and nothing cached. Found by the reliability suite's fuzzing (tests/reliability/
test_fuzz.py): a truncated reply whose last record stops mid-way parses (RFC 2181 §9 lets
complete records be kept) but could not be re-stamped with the client's ID, and the error
escaped the proxy after the reply had been cached, failing every later query for the name."""

from __future__ import annotations

import asyncio
import struct

import pytest

import proxy.dns.server
from proxy.config.model import Mesh
from proxy.dns.codec import TYPE_A, Rcode, parse_response
from proxy.dns.resolvconf import ResolvConf
from proxy.dns.server import DnsProxy
from proxy.series import Stats

NAME = b"\x03one\x07example\x03org\x00"


def query(ident: int) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + NAME + b"\0\1\0\1"


def truncated_reply(ident: int) -> bytes:
    """TC=1, two answers announced: one whole A record, then one cut inside its RDATA."""
    header = struct.pack("!HHHHHH", ident, 0x8380, 1, 2, 0, 0)  # QR RD TC RA
    whole = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes([192, 0, 2, 10])
    cut = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes([192, 0])
    return header + NAME + b"\0\1\0\1" + whole + cut


def upstream(transport: str, asked: list[str]):
    """A resolver that always sends the truncated reply, noting each time it is asked."""

    async def exchange(_server: str, data: bytes) -> bytes:
        asked.append(transport)
        return truncated_reply(struct.unpack_from("!H", data)[0])

    return exchange


def test_a_truncated_reply_that_does_not_walk_is_servfail_and_never_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(proxy.dns.server, "_udp_exchange", upstream("udp", asked))
    monkeypatch.setattr(proxy.dns.server, "_tcp_exchange", upstream("tcp", asked))
    assert parse_response(truncated_reply(1)).truncated  # the codec accepts it
    stats = Stats()
    dns = DnsProxy(Mesh(), ResolvConf(nameservers=("192.0.2.1",), search=()), stats)
    for ident in (0x1111, 0x2222):  # the second is not answered from a poisoned cache
        reply = asyncio.run(dns.answer(query(ident), "udp"))
        assert reply is not None
        parsed = parse_response(reply)
        assert (parsed.id, parsed.rcode) == (ident, Rcode.SERVFAIL)
    assert asked == ["udp", "tcp", "udp", "tcp"]  # asked afresh both times
    failures = {
        labels: value for (metric, labels), value in stats.counters.items()
        if metric.name == "dns_failures_total"
    }  # fmt: skip
    assert sum(failures.values()) == 2, failures
