"""build_answer and the record helpers: what the DNS proxy sends for mesh names."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from proxy.dns.codec import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Query,
    Rcode,
    Record,
    a_record,
    aaaa_record,
    build_answer,
    encode_name,
    parse_query,
    parse_response,
)

QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
NAME = "web.default.svc.cluster.local"


def wire(name: str) -> bytes:
    out = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if name)
    return out + b"\x00"


def make_query(
    name: str = NAME,
    qtype: int = TYPE_A,
    *,
    flags: int = RD,
    payload: int | None = None,
    dnssec_ok: bool = False,
    ident: int = 0x1234,
) -> Query:
    edns = b""
    if payload is not None:
        edns = b"\x00" + struct.pack("!HHIH", 41, payload, 0x8000 if dnssec_ok else 0, 0)
    data = struct.pack("!6H", ident, flags, 1, 0, 0, 1 if edns else 0)
    return parse_query(data + wire(name) + struct.pack("!HH", qtype, CLASS_IN) + edns)


def header(reply: bytes) -> tuple[int, ...]:
    return struct.unpack_from("!6H", reply)


# --- records ----------------------------------------------------------------------------------


def test_a_record_encodes_four_octets() -> None:
    record = a_record("Web.Default.svc.cluster.local.", "10.0.0.7", 5)
    assert record == Record(NAME, TYPE_A, CLASS_IN, 5, bytes([10, 0, 0, 7]))


def test_aaaa_record_encodes_sixteen_octets() -> None:
    record = aaaa_record(NAME, "fd00::7", 5)
    assert record.rtype == TYPE_AAAA
    assert record.data == bytes.fromhex("fd000000000000000000000000000007")


@pytest.mark.parametrize(
    ("make", "address"),
    [(a_record, "fd00::1"), (a_record, "10.0.0.256"), (aaaa_record, "10.0.0.1"), (a_record, "")],
)
def test_record_helpers_refuse_bad_addresses(
    make: Callable[[str, str, int], Record], address: str
) -> None:
    with pytest.raises(ValueError):
        make(NAME, address, 5)


@pytest.mark.parametrize("ttl", [-1, 2**31])
def test_record_helpers_refuse_ttls_outside_31_bits(ttl: int) -> None:
    with pytest.raises(ValueError):
        a_record(NAME, "10.0.0.1", ttl)


@pytest.mark.parametrize(
    "name", ["a..b", "a" * 64 + ".com", "caf\u00e9.com", "a b.c\tx", "x" * 300]
)
def test_record_helpers_refuse_names_that_cannot_be_encoded(name: str) -> None:
    with pytest.raises(ValueError):
        a_record(name, "10.0.0.1", 5)


def test_encode_name_handles_root_and_trailing_dot() -> None:
    assert encode_name("") == encode_name(".") == b"\x00"
    assert encode_name("a.b.") == b"\x01a\x01b\x00"


# --- round trips ------------------------------------------------------------------------------


def test_answer_round_trips_through_parse_response() -> None:
    query = make_query(ident=0xCAFE)
    records = [a_record(NAME, "10.0.0.1", 5), a_record(NAME, "10.0.0.2", 5)]
    response = parse_response(build_answer(query, Rcode.NOERROR, records))
    assert response.id == 0xCAFE
    assert response.rcode == Rcode.NOERROR
    assert response.flags == QR | AA | RD | RA
    assert not response.truncated
    assert response.question == query.question
    assert response.answers == tuple(records)
    assert response.authority == ()
    assert response.edns_payload is None


def test_answer_owner_is_compressed_to_the_question() -> None:
    query = make_query()
    reply = build_answer(query, Rcode.NOERROR, [a_record(NAME, "10.0.0.1", 5)])
    answer_at = 12 + len(query.raw_question)
    assert reply[answer_at : answer_at + 2] == b"\xc0\x0c"
    assert len(reply) == answer_at + 2 + 10 + 4


def test_record_for_another_name_is_encoded_in_full() -> None:
    query = make_query()
    target = wire("web-v2.default.svc.cluster.local")
    records = [
        Record(NAME, TYPE_CNAME, CLASS_IN, 5, target),
        a_record("web-v2.default.svc.cluster.local", "10.0.0.9", 5),
    ]
    response = parse_response(build_answer(query, Rcode.NOERROR, records))
    assert response.answers == tuple(records)


def test_question_is_echoed_exactly_with_the_clients_case() -> None:
    query = make_query("WeB.DeFault.svc.cluster.local")
    reply = build_answer(query, Rcode.NOERROR, [a_record(NAME, "10.0.0.1", 5)])
    assert reply[12 : 12 + len(query.raw_question)] == query.raw_question
    assert b"WeB.DeFault".replace(b".", b"\x07") in reply


def test_rd_is_copied_and_ra_always_set() -> None:
    _, flags, *_ = header(build_answer(make_query(flags=0), Rcode.NOERROR))
    assert flags & RD == 0
    assert flags & RA


def test_nxdomain_is_authoritative_without_answers() -> None:
    ident, flags, qd, an, ns, ar = header(build_answer(make_query(ident=9), Rcode.NXDOMAIN))
    assert (ident, qd, an, ns, ar) == (9, 1, 0, 0, 0)
    assert flags == QR | AA | RD | RA | Rcode.NXDOMAIN


def test_servfail_and_non_authoritative_replies_clear_aa() -> None:
    _, flags, *_ = header(build_answer(make_query(), Rcode.SERVFAIL))
    assert flags & AA == 0
    _, flags, *_ = header(build_answer(make_query(), Rcode.NOERROR, authoritative=False))
    assert flags & AA == 0


def test_opt_is_included_only_when_the_query_had_edns() -> None:
    with_edns = parse_response(build_answer(make_query(payload=4096), Rcode.NOERROR))
    assert with_edns.edns_payload == 1232  # flag day 2020, whatever the client offered
    assert header(build_answer(make_query(), Rcode.NOERROR))[5] == 0


def test_do_bit_is_echoed_in_our_opt() -> None:
    reply = build_answer(make_query(payload=1232, dnssec_ok=True), Rcode.NOERROR)
    _, _, ttl, _ = struct.unpack_from("!HHIH", reply, len(reply) - 10)
    assert ttl == 0x8000


def test_extended_rcode_needs_edns() -> None:
    with pytest.raises(ValueError):
        build_answer(make_query(), Rcode.BADVERS)
    response = parse_response(build_answer(make_query(payload=1232), Rcode.BADVERS))
    assert response.rcode == Rcode.BADVERS


def test_bad_record_fields_are_value_errors() -> None:
    query = make_query()
    for record in (
        Record(NAME, TYPE_A, CLASS_IN, -1, b"\x00" * 4),
        Record(NAME, 70000, CLASS_IN, 5, b""),
        Record(NAME, TYPE_A, CLASS_IN, 5, b"\x00" * 70000),
        Record("a..b", TYPE_A, CLASS_IN, 5, b"\x00" * 4),
    ):
        with pytest.raises(ValueError):
            build_answer(query, Rcode.NOERROR, [record])


# --- truncation -------------------------------------------------------------------------------


def many_aaaa(count: int) -> list[Record]:
    return [aaaa_record(NAME, f"fd00::{i + 1:x}", 5) for i in range(count)]


def test_answers_over_512_octets_are_dropped_with_tc() -> None:
    query = make_query(qtype=TYPE_AAAA)
    reply = build_answer(query, Rcode.NOERROR, many_aaaa(40))
    assert len(reply) <= 512
    _, flags, qd, an, ns, ar = header(reply)
    assert flags & TC
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    assert parse_response(reply).truncated


def test_the_same_answers_fit_in_an_edns_1232_reply() -> None:
    query = make_query(qtype=TYPE_AAAA, payload=1232)
    reply = build_answer(query, Rcode.NOERROR, many_aaaa(40))
    assert 512 < len(reply) <= 1232
    response = parse_response(reply)
    assert not response.truncated
    assert len(response.answers) == 40


def test_edns_reply_over_the_payload_keeps_its_opt_when_truncated() -> None:
    query = make_query(qtype=TYPE_AAAA, payload=1232)
    reply = build_answer(query, Rcode.NOERROR, many_aaaa(60))
    assert len(reply) <= 1232
    response = parse_response(reply)
    assert response.truncated
    assert response.answers == ()
    assert response.edns_payload == 1232


def test_answers_exactly_at_the_limit_are_not_truncated() -> None:
    query = make_query(qtype=TYPE_AAAA)
    fixed = 12 + len(query.raw_question)
    count = (512 - fixed) // 28  # each compressed AAAA answer: 2 + 10 + 16
    reply = build_answer(query, Rcode.NOERROR, many_aaaa(count))
    assert len(reply) <= 512
    assert header(reply)[3] == count
    assert header(build_answer(query, Rcode.NOERROR, many_aaaa(count + 1)))[1] & TC


def test_max_size_overrides_the_udp_limit() -> None:
    query = make_query(qtype=TYPE_AAAA)
    reply = build_answer(query, Rcode.NOERROR, many_aaaa(400), max_size=65535)  # TCP
    assert len(parse_response(reply).answers) == 400
    smaller = build_answer(make_query(payload=4096), Rcode.NOERROR, many_aaaa(40), max_size=600)
    assert header(smaller)[1] & TC
    assert len(smaller) <= 600


def test_max_size_zero_always_yields_a_truncated_reply() -> None:
    # The server relies on this to turn an oversized upstream reply into TC=1.
    for payload in (None, 1232):
        reply = build_answer(make_query(payload=payload), Rcode.NOERROR, (), max_size=0)
        response = parse_response(reply)
        assert response.truncated
        assert response.answers == ()
