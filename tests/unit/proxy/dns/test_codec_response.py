"""parse_response, cache_ttl and with_id_and_ttl: handling what upstream resolvers send.

Responses are hand-made, compressed the way real servers compress them, with pointer offsets
computed from the bytes laid down before them.
"""

from __future__ import annotations

import struct
import time

import pytest

from proxy.dns.codec import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_MX,
    TYPE_OPT,
    TYPE_SOA,
    TYPE_SRV,
    TYPE_TXT,
    DnsError,
    Question,
    Rcode,
    Record,
    Response,
    cache_ttl,
    parse_response,
    with_id_and_ttl,
)

QR_RD_RA = 0x8180
TC = 0x0200


def wire(name: str) -> bytes:
    out = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if name)
    return out + b"\x00"


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt_rr(payload: int = 1232, ttl: int = 0) -> bytes:
    return rr(b"\x00", TYPE_OPT, ttl, b"", rclass=payload)


def message(
    question: bytes,
    answers: list[bytes] | None = None,
    authority: list[bytes] | None = None,
    additional: list[bytes] | None = None,
    *,
    flags: int = QR_RD_RA,
    ident: int = 0x0101,
) -> bytes:
    sections = [answers or [], authority or [], additional or []]
    counts = [len(section) for section in sections]
    head = struct.pack("!6H", ident, flags, 1 if question else 0, *counts)
    return head + question + b"".join(b"".join(section) for section in sections)


def question(name: str, qtype: int = TYPE_A) -> bytes:
    return wire(name) + struct.pack("!HH", qtype, CLASS_IN)


def soa_rdata(zone_at: int, minimum: int) -> bytes:
    names = b"\x02ns" + ptr(zone_at) + b"\x0ahostmaster" + ptr(zone_at)
    return names + struct.pack("!5I", 2024010101, 7200, 3600, 1209600, minimum)


def cname_response() -> bytes:
    """www.example.com CNAME web.example.com, web.example.com A 93.184.216.34, with OPT."""
    q = question("www.example.com")  # "example.com" starts at 12 + 4 = 16
    cname = rr(ptr(12), TYPE_CNAME, 300, b"\x03web" + ptr(16))
    web_at = 12 + len(q) + 2 + 10  # the CNAME's RDATA
    a = rr(ptr(web_at), TYPE_A, 60, bytes([93, 184, 216, 34]))
    return message(q, [cname, a], additional=[opt_rr()])


def nxdomain_response(soa_ttl: int = 3600, minimum: int = 60) -> bytes:
    q = question("nope.example.com")  # "example.com" starts at 12 + 5 = 17
    soa = rr(ptr(17), TYPE_SOA, soa_ttl, soa_rdata(17, minimum))
    return message(q, authority=[soa], flags=QR_RD_RA | Rcode.NXDOMAIN)


def rejects(data: bytes) -> DnsError:
    with pytest.raises(DnsError) as caught:
        parse_response(data)
    assert caught.value.rcode is Rcode.SERVFAIL
    return caught.value


# --- parsing ----------------------------------------------------------------------------------


def test_parses_a_compressed_cname_chain() -> None:
    response = parse_response(cname_response())
    assert response.id == 0x0101
    assert response.flags == QR_RD_RA
    assert response.rcode == Rcode.NOERROR
    assert not response.truncated
    assert response.question == Question("www.example.com", TYPE_A, CLASS_IN)
    assert response.answers == (
        Record("www.example.com", TYPE_CNAME, CLASS_IN, 300, wire("web.example.com")),
        Record("web.example.com", TYPE_A, CLASS_IN, 60, bytes([93, 184, 216, 34])),
    )
    assert response.additional == ()
    assert response.edns_payload == 1232


def test_names_in_soa_mx_and_srv_rdata_are_expanded() -> None:
    q = question("example.com", TYPE_MX)  # "example.com" at 12
    mx = rr(ptr(12), TYPE_MX, 60, b"\x00\x0a\x04mail" + ptr(12))
    srv = rr(ptr(12), TYPE_SRV, 60, b"\x00\x01\x00\x02\x01\xbb\x03sip" + ptr(12))
    soa = rr(ptr(12), TYPE_SOA, 60, soa_rdata(12, 30))
    response = parse_response(message(q, [mx, srv], [soa]))
    assert response.answers[0].data == b"\x00\x0a" + wire("mail.example.com")
    assert response.answers[1].data == b"\x00\x01\x00\x02\x01\xbb" + wire("sip.example.com")
    expected_soa = wire("ns.example.com") + wire("hostmaster.example.com")
    assert response.authority[0].data[:-20] == expected_soa


def test_owner_names_are_lower_cased_and_rdata_case_is_kept() -> None:
    q = question("WWW.Example.COM")
    cname = rr(ptr(12), TYPE_CNAME, 5, wire("Web.Example.COM"))
    response = parse_response(message(q, [cname]))
    assert response.question is not None
    assert response.question.name == "www.example.com"
    assert response.answers[0].name == "www.example.com"
    assert response.answers[0].data == wire("Web.Example.COM")


def test_ttl_with_the_top_bit_set_reads_as_zero() -> None:
    data = message(question("a.example"), [rr(ptr(12), TYPE_A, 0x80000001, b"\x01\x02\x03\x04")])
    assert parse_response(data).answers[0].ttl == 0


def test_extended_rcode_is_combined_from_the_opt() -> None:
    data = message(question("a.example"), additional=[opt_rr(ttl=1 << 24)])
    assert parse_response(data).rcode == Rcode.BADVERS


def test_other_additional_records_are_kept_without_the_opt() -> None:
    glue = rr(wire("ns.example"), TYPE_A, 60, b"\x01\x02\x03\x04")
    response = parse_response(message(question("example"), additional=[glue, opt_rr()]))
    assert [record.name for record in response.additional] == ["ns.example"]


def test_a_response_without_a_question_parses() -> None:
    response = parse_response(message(b"", flags=QR_RD_RA | Rcode.FORMERR))
    assert response.question is None
    assert response.rcode == Rcode.FORMERR


# --- defensive parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 5, 11])
def test_short_header_is_rejected(length: int) -> None:
    rejects(cname_response()[:length])


def test_a_query_is_not_a_response() -> None:
    data = bytearray(cname_response())
    data[2] &= 0x7F
    rejects(bytes(data))


def test_more_than_one_question_is_rejected() -> None:
    data = bytearray(cname_response())
    data[5] = 2
    rejects(bytes(data))


def test_pointer_to_itself_is_rejected_quickly() -> None:
    q = question("a.example")
    owner_at = 12 + len(q)
    started = time.perf_counter()
    rejects(message(q, [rr(ptr(owner_at), TYPE_A, 5, b"\x01\x02\x03\x04")]))
    assert time.perf_counter() - started < 0.1


def test_two_pointers_to_each_other_are_rejected_quickly() -> None:
    q = question("a.example")
    first_at = 12 + len(q)
    second_at = first_at + 2 + 10 + 2  # after the first record, whose RDATA is 2 octets
    first = rr(ptr(second_at), TYPE_CNAME, 5, ptr(first_at))  # forward: rejected at once
    second = rr(ptr(first_at), TYPE_CNAME, 5, ptr(second_at))
    started = time.perf_counter()
    rejects(message(q, [first, second]))
    # Entered from the later one: X (opaque TXT RDATA) points to Y, Y (an owner) back to X.
    x_at = first_at + 2 + 10
    y_at = x_at + 2
    txt = rr(ptr(12), TYPE_TXT, 5, ptr(y_at))
    loop = rr(ptr(x_at), TYPE_A, 5, b"\x01\x02\x03\x04")
    assert rejects(message(q, [txt, loop])).reason == "bad_compression_pointer"
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    "owner",
    [b"\xc0\x00", b"\xc0\x0b", b"\xff\xff", b"\xc0", b"\x40abc", b"\x80abc", b"\x05ab"],
    ids=["into-header", "header-end", "outside", "cut", "extended", "reserved", "short-label"],
)
def test_bad_pointers_and_label_types_are_rejected(owner: bytes) -> None:
    rejects(message(question("a.example"), [rr(owner, TYPE_A, 5, b"\x01\x02\x03\x04")]))


def pointer_chain(hops: int, *, then_one_more: bool = False) -> bytes:
    """An A record whose owner takes ``hops`` pointer hops to reach the name "z"; optionally a
    second A record pointing at the first one's owner, read after the chain is memoised."""
    q = question("a.example")
    rdata_at = 12 + len(q) + 2 + 10
    # TXT RDATA is opaque to the parser: lay a name "z", then hops - 1 pointers, the first to
    # "z" and each later one to the pointer before it.
    links = [ptr(rdata_at)] + [ptr(rdata_at + 3 + 2 * i) for i in range(hops - 2)]
    rdata = b"\x01z\x00" + b"".join(links)
    txt = rr(ptr(12), TYPE_TXT, 5, rdata)
    owner_at = rdata_at + len(rdata)
    records = [txt, rr(ptr(owner_at - 2), TYPE_A, 5, b"\x01\x02\x03\x04")]
    if then_one_more:
        records.append(rr(ptr(owner_at), TYPE_A, 5, b"\x01\x02\x03\x04"))
    return message(q, records)


def test_pointer_hops_are_capped_at_127() -> None:
    assert parse_response(pointer_chain(127)).answers[1].name == "z"
    assert rejects(pointer_chain(128)).reason == "too_many_compression_pointers"


def test_hop_cap_holds_for_names_resolved_from_the_memo() -> None:
    assert parse_response(pointer_chain(126, then_one_more=True)).answers[2].name == "z"
    reason = rejects(pointer_chain(127, then_one_more=True)).reason
    assert reason == "too_many_compression_pointers"


def test_names_over_255_octets_via_compression_are_rejected() -> None:
    q = question(".".join(["a" * 63] * 3 + ["b" * 61]))  # exactly 255 octets
    ok = rr(ptr(12), TYPE_A, 5, b"\x01\x02\x03\x04")
    assert parse_response(message(q, [ok])).answers[0].name.endswith("b" * 61)
    longer = rr(b"\x01c" + ptr(12), TYPE_A, 5, b"\x01\x02\x03\x04")  # 257 octets
    rejects(message(q, [longer]))


def test_truncated_record_is_rejected_without_tc() -> None:
    data = cname_response()
    for cut in (len(data) - 1, len(data) - 11, len(data) - 20, 34, 40):
        rejects(data[:cut])


def test_truncated_reply_with_tc_keeps_the_complete_records() -> None:
    data = bytearray(cname_response())
    data[2] |= TC >> 8
    cut = 12 + len(question("www.example.com")) + 2 + 10 + 6 + 5  # CNAME, then 5 octets
    response = parse_response(bytes(data[:cut]))
    assert response.truncated
    assert [record.rtype for record in response.answers] == [TYPE_CNAME]


def test_trailing_data_is_rejected() -> None:
    rejects(cname_response() + b"\x00")


@pytest.mark.parametrize(("rtype", "length"), [(TYPE_A, 3), (TYPE_A, 5), (TYPE_AAAA, 4)])
def test_address_records_of_the_wrong_size_are_rejected(rtype: int, length: int) -> None:
    rejects(message(question("a.example"), [rr(ptr(12), rtype, 5, b"\x00" * length)]))


@pytest.mark.parametrize(
    ("rtype", "rdata"),
    [
        (TYPE_CNAME, b""),
        (TYPE_CNAME, wire("x") + b"extra"),
        (TYPE_MX, b"\x00"),
        (TYPE_SOA, wire("a") + wire("b") + b"\x00" * 19),
        (TYPE_CNAME, b"\x05ab"),  # name runs past the record into the next one
    ],
)
def test_malformed_names_in_rdata_are_rejected(rtype: int, rdata: bytes) -> None:
    q = question("a.example")
    rejects(message(q, [rr(ptr(12), rtype, 5, rdata), rr(ptr(12), TYPE_TXT, 5, b"\x03abc")]))


def test_opt_outside_additional_or_twice_is_rejected() -> None:
    q = question("a.example")
    rejects(message(q, [opt_rr()]))
    rejects(message(q, authority=[opt_rr()]))
    rejects(message(q, additional=[opt_rr(), opt_rr()]))
    rejects(message(q, additional=[rr(wire("x"), TYPE_OPT, 0, b"", rclass=1232)]))


@pytest.mark.parametrize("label", [b"a.b", b"a\x00", b"\xff", b"\x1b[31m"])
def test_bad_octets_in_owner_names_are_rejected(label: bytes) -> None:
    owner = bytes((len(label),)) + label + ptr(12)
    rejects(message(question("example"), [rr(owner, TYPE_A, 5, b"\x01\x02\x03\x04")]))


def test_a_message_full_of_pointer_chains_parses_in_linear_time() -> None:
    q = question("a.example")
    rdata_at = 12 + len(q) + 2 + 10
    long_name = b"\x01a" * 100 + b"\x00"  # 201 octets, 100 labels
    links = (
        long_name
        + ptr(rdata_at)
        + b"".join(ptr(rdata_at + len(long_name) + 2 * i) for i in range(100))
    )
    txt = rr(ptr(12), TYPE_TXT, 5, links)
    deepest = ptr(rdata_at + len(links) - 2)
    records = [rr(deepest, TYPE_TXT, 5, b"")] * 5000  # 12 octets each, 102 hops each
    data = message(q, [txt, *records])
    started = time.perf_counter()
    response = parse_response(data)
    assert time.perf_counter() - started < 1.0
    assert len(response.answers) == 5001
    assert response.answers[-1].name == ".".join(["a"] * 100)


# --- cache_ttl --------------------------------------------------------------------------------


def response_of(
    rcode: int = Rcode.NOERROR,
    answers: tuple[Record, ...] = (),
    authority: tuple[Record, ...] = (),
    truncated: bool = False,
) -> Response:
    return Response(1, rcode, truncated, Question("a.example", TYPE_A, 1), answers, authority)


def a_rr(ttl: int) -> Record:
    return Record("a.example", TYPE_A, CLASS_IN, ttl, b"\x01\x02\x03\x04")


def test_positive_answers_live_for_their_smallest_ttl() -> None:
    assert cache_ttl(parse_response(cname_response())) == 60
    assert cache_ttl(response_of(answers=(a_rr(120), a_rr(90), a_rr(200)))) == 90


def test_ttls_are_capped() -> None:
    assert cache_ttl(response_of(answers=(a_rr(86400),))) == 300
    assert cache_ttl(response_of(answers=(a_rr(86400),)), cap=30) == 30


def test_negative_answers_use_the_soa_minimum_or_ttl_whichever_is_smaller() -> None:
    assert cache_ttl(parse_response(nxdomain_response(soa_ttl=3600, minimum=60))) == 60
    assert cache_ttl(parse_response(nxdomain_response(soa_ttl=20, minimum=600))) == 20
    assert cache_ttl(parse_response(nxdomain_response(soa_ttl=9000, minimum=9000))) == 300


def test_nodata_uses_the_soa_too() -> None:
    q = question("example.com", TYPE_AAAA)
    soa = rr(ptr(12), TYPE_SOA, 3600, soa_rdata(12, 45))
    assert cache_ttl(parse_response(message(q, authority=[soa]))) == 45


def test_negative_answers_without_soa_use_the_default() -> None:
    assert cache_ttl(response_of(Rcode.NXDOMAIN)) == 30
    assert cache_ttl(response_of(Rcode.NOERROR), negative_default=12) == 12


@pytest.mark.parametrize("rcode", [Rcode.SERVFAIL, Rcode.REFUSED, Rcode.FORMERR, Rcode.NOTIMP])
def test_failures_are_not_cached(rcode: Rcode) -> None:
    assert cache_ttl(response_of(rcode, answers=(a_rr(60),))) is None


def test_truncated_and_zero_ttl_replies_are_not_cached() -> None:
    assert cache_ttl(response_of(answers=(a_rr(60),), truncated=True)) is None
    assert cache_ttl(response_of(answers=(a_rr(60), a_rr(0)))) is None


# --- with_id_and_ttl --------------------------------------------------------------------------


def test_rewrites_the_id_and_decrements_every_ttl_but_the_opts() -> None:
    q = question("a.example")
    answer = rr(ptr(12), TYPE_A, 100, b"\x01\x02\x03\x04")
    soa = rr(ptr(14), TYPE_SOA, 50, soa_rdata(14, 30))
    glue = rr(wire("ns.example"), TYPE_A, 3, b"\x05\x06\x07\x08")
    data = message(q, [answer], [soa], [glue, opt_rr(ttl=0x8000)], ident=0x1111)
    fresh = with_id_and_ttl(data, 0x2222, 10)
    assert len(fresh) == len(data)
    response = parse_response(fresh)
    assert response.id == 0x2222
    assert [r.ttl for r in response.answers + response.authority + response.additional] == [
        90,
        40,
        0,  # floored, not negative
    ]
    assert fresh.endswith(opt_rr(ttl=0x8000))  # the DO bit is not a TTL


def test_zero_elapsed_changes_only_the_id() -> None:
    data = cname_response()
    assert with_id_and_ttl(data, 0xABCD, 0) == b"\xab\xcd" + data[2:]


def test_huge_elapsed_floors_every_ttl_at_zero() -> None:
    response = parse_response(with_id_and_ttl(cname_response(), 1, 10**9))
    assert [record.ttl for record in response.answers] == [0, 0]


def test_bad_arguments_and_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        with_id_and_ttl(cname_response(), 0x10000, 0)
    with pytest.raises(ValueError):
        with_id_and_ttl(cname_response(), 1, -1)
    for bad in (b"\x00" * 5, cname_response()[:-3], cname_response()[:20]):
        with pytest.raises(DnsError):
            with_id_and_ttl(bad, 1, 1)
