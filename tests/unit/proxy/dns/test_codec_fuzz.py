"""Seeded mutation fuzzing: whatever bytes arrive, the codec raises DnsError or nothing.

Seeds are valid queries and responses (dig captures, compressed upstream replies, our own
answers); mutations flip, cut, insert, duplicate and plant compression pointers. On top of
"only DnsError", a few properties must hold for every input: an accepted query can be
answered and the answer parses back; an error reply is never larger than the packet it
answers (no amplification) and is itself a well-formed message.
"""

from __future__ import annotations

import contextlib
import random
import struct
import time

import pytest

from proxy.dns.codec import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SOA,
    DnsError,
    Query,
    Rcode,
    a_record,
    aaaa_record,
    build_answer,
    build_error,
    parse_query,
    parse_response,
    with_id_and_ttl,
)

ITERATIONS = 20_000
DIG_EDNS_COOKIE = bytes.fromhex(
    "e3be01200001000000000001035765620744656661756c740373766307636c7573746572056c6f63616c00"
    "0001000100002904d000000000000c000a00086098232dfa83e481"
)
DIG_NO_EDNS = bytes.fromhex("7e1e01200001000000000000076578616d706c6503636f6d00001c0001")


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def upstream_replies() -> list[bytes]:
    question = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    web_at = 12 + len(question) + 12
    cname = rr(ptr(12), TYPE_CNAME, 300, b"\x03web" + ptr(16))
    a = rr(ptr(web_at), TYPE_A, 60, b"\x5d\xb8\xd8\x22")
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    positive = struct.pack("!6H", 1, 0x8180, 1, 2, 0, 1) + question + cname + a + opt
    soa_rdata = b"\x02ns" + ptr(16) + b"\x0ahostmaster" + ptr(16) + b"\x00" * 20
    soa = rr(ptr(16), TYPE_SOA, 3600, soa_rdata)
    negative = struct.pack("!6H", 2, 0x8183, 1, 0, 1, 0) + question + soa
    return [positive, negative]


def seeds() -> list[bytes]:
    query = parse_query(DIG_EDNS_COOKIE)
    records = [aaaa_record(query.question.name, f"fd00::{i + 1:x}", 5) for i in range(8)]
    ours = build_answer(query, Rcode.NOERROR, records)
    return [DIG_EDNS_COOKIE, DIG_NO_EDNS, ours, *upstream_replies()]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if out:
            mutate_once(rng, out)
    return bytes(out)


def mutate_once(rng: random.Random, out: bytearray) -> None:
    at = rng.randrange(len(out))
    op = rng.randrange(7)
    if op == 0:
        out[at] = rng.randrange(256)  # flip a byte
    elif op == 1:
        del out[at:]  # truncate
    elif op == 2:
        out[at:at] = rng.randbytes(rng.randint(1, 4))  # insert junk
    elif op == 3:
        del out[at : at + rng.randint(1, 8)]  # cut a slice out
    elif op == 4:
        out.extend(out[at:])  # duplicate a tail: extra records, trailing data
    elif op == 5:
        # Plant a compression pointer: backwards, forwards, to itself or past the end.
        out[at : at + 2] = ptr(rng.randrange(len(out) + 16) & 0x3FFF)
    else:
        # Small section counts: more records claimed, or fewer, than are there.
        out[4:12] = struct.pack("!4H", *(rng.randrange(4) for _ in range(4)))


def check_query(data: bytes) -> None:
    try:
        query = parse_query(data)
    except DnsError as err:
        if err.rcode is None:
            return
        reply = build_error(data, err.rcode)
        if reply is not None:
            assert len(reply) <= len(data), "error reply larger than the query"
            parse_response(reply)
        return
    check_answer(query)


def check_answer(query: Query) -> None:
    records = [a_record(query.question.name, "10.0.0.1", 5)]
    reply = build_answer(query, Rcode.NOERROR, records)
    assert len(reply) <= (query.edns_payload or 512)
    response = parse_response(reply)
    assert response.id == query.id
    assert response.question == query.question
    assert response.answers in ((), tuple(records))


def check_response(data: bytes) -> None:
    with contextlib.suppress(DnsError):
        parse_response(data)
    with contextlib.suppress(DnsError):
        with_id_and_ttl(data, 0xFFFF, 7)


def test_random_mutations_only_ever_raise_dns_error() -> None:
    rng = random.Random(1035)
    corpus = seeds()
    started = time.perf_counter()
    for _ in range(ITERATIONS):
        data = mutate(rng, rng.choice(corpus))
        try:
            check_query(data)
            check_response(data)
        except Exception as err:  # report the input that broke it
            pytest.fail(f"{type(err).__name__}: {err} for input {data.hex()}")
    assert time.perf_counter() - started < 30  # typically ~1 s; a hang or blow-up fails


def test_random_bytes_only_ever_raise_dns_error() -> None:
    rng = random.Random(2181)
    for _ in range(2_000):
        data = rng.randbytes(rng.randrange(0, 80))
        try:
            check_query(data)
            check_response(data)
        except Exception as err:
            pytest.fail(f"{type(err).__name__}: {err} for input {data.hex()}")


def test_the_seeds_themselves_are_valid() -> None:
    for data in seeds()[:2]:
        check_answer(parse_query(data))
    for data in seeds()[2:]:
        parse_response(data)
        assert parse_response(with_id_and_ttl(data, 1, 1)).id == 1
    assert TYPE_AAAA in {r.rtype for r in parse_response(seeds()[2]).answers}
