"""parse_query and build_error: what the DNS proxy accepts from (untrusted) clients.

Packets are hand-made bytes, independent of the codec's own encoder; the DIG_* ones were
captured from dig 9.18 sending to a local socket.
"""

from __future__ import annotations

import struct

import pytest

from proxy.dns.codec import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_NS,
    DnsError,
    Rcode,
    build_error,
    parse_query,
    parse_response,
)

# dig Web.Default.svc.cluster.local A (EDNS 1232 with a COOKIE option, RD and AD set)
DIG_EDNS_COOKIE = bytes.fromhex(
    "e3be01200001000000000001035765620744656661756c740373766307636c7573746572056c6f63616c00"
    "0001000100002904d000000000000c000a00086098232dfa83e481"
)
# dig +noedns example.com AAAA
DIG_NO_EDNS = bytes.fromhex("7e1e01200001000000000000076578616d706c6503636f6d00001c0001")
# dig +dnssec +nocookie example.com AAAA
DIG_DNSSEC = bytes.fromhex(
    "ad4901200001000000000001076578616d706c6503636f6d00001c000100002904d0000080000000"
)


def wire(name: str) -> bytes:
    out = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if name)
    return out + b"\x00"


def header(
    ident: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


def opt(payload: int = 4096, ttl: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(rdata)) + rdata


def query(
    name: str = "web.default.svc.cluster.local",
    qtype: int = TYPE_A,
    qclass: int = CLASS_IN,
    *,
    flags: int = 0x0100,
    edns: bytes = b"",
    ident: int = 0x1234,
) -> bytes:
    question = wire(name) + struct.pack("!HH", qtype, qclass)
    return header(ident, flags, ar=1 if edns else 0) + question + edns


def raw_query(name_bytes: bytes, qtype: int = TYPE_A) -> bytes:
    return header() + name_bytes + struct.pack("!HH", qtype, CLASS_IN)


def rejects(data: bytes) -> Rcode | None:
    with pytest.raises(DnsError) as caught:
        parse_query(data)
    return caught.value.rcode


# --- accepted queries -------------------------------------------------------------------------


def test_parses_a_real_dig_query_with_edns_and_cookie() -> None:
    query_ = parse_query(DIG_EDNS_COOKIE)
    assert query_.id == 0xE3BE
    assert query_.flags == 0x0120
    assert query_.question.name == "web.default.svc.cluster.local"
    assert (query_.question.qtype, query_.question.qclass) == (TYPE_A, CLASS_IN)
    assert query_.recursion_desired
    assert query_.edns_payload == 1232
    assert not query_.dnssec_ok
    # The raw question keeps the client's case, for echoing (0x20 randomisation).
    assert query_.raw_question == wire("Web.Default.svc.cluster.local") + b"\x00\x01\x00\x01"


def test_parses_a_query_without_edns() -> None:
    query_ = parse_query(DIG_NO_EDNS)
    assert query_.question.name == "example.com"
    assert query_.question.qtype == TYPE_AAAA
    assert query_.edns_payload is None


def test_dnssec_ok_bit_is_read_from_opt() -> None:
    assert parse_query(DIG_DNSSEC).dnssec_ok


def test_root_name_is_the_empty_string() -> None:
    assert parse_query(query("", TYPE_NS)).question.name == ""


def test_recursion_desired_follows_rd_bit() -> None:
    assert not parse_query(query(flags=0)).recursion_desired


@pytest.mark.parametrize(
    ("advertised", "clamped"), [(0, 512), (511, 512), (1232, 1232), (65535, 4096)]
)
def test_edns_payload_is_clamped(advertised: int, clamped: int) -> None:
    assert parse_query(query(edns=opt(advertised))).edns_payload == clamped


def test_names_are_lower_cased() -> None:
    assert parse_query(query("WEB.Default.SVC")).question.name == "web.default.svc"


def test_space_and_underscore_are_allowed_in_labels() -> None:
    # DNS-SD instance names carry spaces; printable ASCII other than '.' stays unambiguous.
    name = parse_query(raw_query(b"\x0amy printer\x04_ipp\x04_tcp\x00")).question.name
    assert name == "my printer._ipp._tcp"


# --- header rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 11])
def test_short_header_is_dropped(length: int) -> None:
    data = DIG_NO_EDNS[:length]
    assert rejects(data) is None
    assert build_error(data, Rcode.FORMERR) is None


def test_a_response_sent_to_us_is_dropped() -> None:
    data = query(flags=0x8100)
    assert rejects(data) is None
    assert build_error(data, Rcode.FORMERR) is None  # never answer a response: ping-pong


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_opcodes_other_than_query_are_not_implemented(opcode: int) -> None:
    assert rejects(query(flags=0x0100 | opcode << 11)) is Rcode.NOTIMP


@pytest.mark.parametrize(
    ("qd", "an", "ns", "ar"), [(0, 0, 0, 0), (2, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 2)]
)
def test_section_counts_are_formerr(qd: int, an: int, ns: int, ar: int) -> None:
    data = header(qd=qd, an=an, ns=ns, ar=ar) + query()[12:]
    assert rejects(data) is Rcode.FORMERR


def test_query_larger_than_4096_octets_is_formerr() -> None:
    def padded(total: int) -> bytes:
        base = len(query(edns=opt()))
        option_len = total - base - 4
        return query(edns=opt(rdata=struct.pack("!HH", 65001, option_len) + b"x" * option_len))

    assert len(padded(4096)) == 4096
    assert parse_query(padded(4096)).edns_payload == 4096
    assert rejects(padded(4097)) is Rcode.FORMERR


def test_trailing_garbage_is_formerr() -> None:
    assert rejects(query() + b"\x00") is Rcode.FORMERR
    assert rejects(query(edns=opt()) + b"junk") is Rcode.FORMERR


@pytest.mark.parametrize("cut", [12, 13, 20, 30, 43, 46])
def test_truncated_question_is_formerr(cut: int) -> None:
    data = query()  # 12 header + 31 name + 4 type and class = 47
    assert rejects(data[:cut]) is Rcode.FORMERR


# --- OPT rules --------------------------------------------------------------------------------


def test_additional_record_other_than_opt_is_formerr() -> None:
    a_rr = b"\x00" + struct.pack("!HHIH", TYPE_A, CLASS_IN, 60, 4) + b"\x0a\x00\x00\x01"
    assert rejects(query(edns=a_rr)) is Rcode.FORMERR
    tsig = b"\x00" + struct.pack("!HHIH", 250, 255, 0, 0)
    assert rejects(query(edns=tsig)) is Rcode.FORMERR


def test_opt_owner_must_be_root() -> None:
    owned = wire("x") + struct.pack("!HHIH", 41, 4096, 0, 0)
    assert rejects(query(edns=owned)) is Rcode.FORMERR
    pointed = b"\xc0\x0c" + struct.pack("!HHIH", 41, 4096, 0, 0)
    assert rejects(query(edns=pointed)) is Rcode.FORMERR


@pytest.mark.parametrize("rdata", [b"\x00", b"\x00\x0a\x00", b"\x00\x0a\x00\x05abc"])
def test_malformed_edns_options_are_formerr(rdata: bytes) -> None:
    assert rejects(query(edns=opt(rdata=rdata))) is Rcode.FORMERR


def test_opt_rdata_past_the_end_is_formerr() -> None:
    assert rejects(query(edns=opt(rdata=b"\x00\x0a\x00\x00"))[:-2]) is Rcode.FORMERR


def test_unknown_edns_version_is_badvers_with_an_opt_in_the_error() -> None:
    data = query(edns=opt(ttl=1 << 16), ident=0x4242)
    assert rejects(data) is Rcode.BADVERS
    reply = build_error(data, Rcode.BADVERS)
    assert reply is not None
    response = parse_response(reply)
    assert response.id == 0x4242
    assert response.rcode == Rcode.BADVERS  # 4 bits in the header, the rest in the OPT
    assert response.flags & 0xF == 0
    assert response.edns_payload == 1232


# --- question rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("qclass", [0, 3, 4, 254, 255])
def test_classes_other_than_in_are_not_implemented(qclass: int) -> None:
    assert rejects(query(qclass=qclass)) is Rcode.NOTIMP


@pytest.mark.parametrize("qtype", [251, 252, 253, 254, TYPE_ANY])
def test_transfers_mail_and_any_are_not_implemented(qtype: int) -> None:
    assert rejects(query(qtype=qtype)) is Rcode.NOTIMP


@pytest.mark.parametrize("qtype", [0, 41, 249, 250])
def test_meta_types_in_the_question_are_formerr(qtype: int) -> None:
    assert rejects(query(qtype=qtype)) is Rcode.FORMERR


# --- names ------------------------------------------------------------------------------------


def test_label_of_63_octets_is_accepted_and_64_is_formerr() -> None:
    assert parse_query(query("a" * 63 + ".com")).question.name == "a" * 63 + ".com"
    # 64 does not fit in six bits: the length octet 0x40 reads as the 0b01 label type.
    assert rejects(raw_query(b"\x40" + b"a" * 64 + b"\x03com\x00")) is Rcode.FORMERR


def test_name_of_255_octets_is_accepted_and_256_is_formerr() -> None:
    name_255 = ".".join(["a" * 63] * 3 + ["b" * 61])
    name_256 = ".".join(["a" * 63] * 3 + ["b" * 62])
    assert len(wire(name_255)) == 255
    assert len(wire(name_256)) == 256
    assert parse_query(query(name_255)).question.name == name_255
    assert rejects(query(name_256)) is Rcode.FORMERR


def test_many_short_labels_over_255_octets_are_formerr() -> None:
    assert rejects(query(".".join(["a"] * 128))) is Rcode.FORMERR  # 128 * 2 + 1 = 257


@pytest.mark.parametrize("label_type", [0x40, 0x80, 0x7F, 0xBF])
def test_extended_and_reserved_label_types_are_formerr(label_type: int) -> None:
    assert rejects(raw_query(bytes((label_type,)) + b"abc\x00")) is Rcode.FORMERR


@pytest.mark.parametrize(
    "name_bytes",
    [
        b"\xc0\x0c",  # pointer to itself
        b"\x01a\xc0\x0c",  # pointer back to its own start: a loop
        b"\xc0\x00",  # pointer into the header
        b"\xc0\x20",  # pointer forward
        b"\xff\xff",  # pointer far outside the message
        b"\x03www\xc0",  # pointer cut short
    ],
)
def test_compression_pointers_in_the_question_are_formerr(name_bytes: bytes) -> None:
    assert rejects(raw_query(name_bytes)) is Rcode.FORMERR


@pytest.mark.parametrize(
    "label", [b"a.b", b"a\x00b", b"tab\t", b"del\x7f", b"caf\xc3\xa9", b"\xff\xfe", b"new\nline"]
)
def test_dots_and_unprintable_octets_in_a_label_are_formerr(label: bytes) -> None:
    name = bytes((len(label),)) + label + b"\x03com\x00"
    assert rejects(raw_query(name)) is Rcode.FORMERR


def test_only_dns_error_is_raised_for_garbage() -> None:
    for data in (b"\x00" * 12, b"\xff" * 12, b"\x00" * 13, b"\xff" * 600, bytes(range(256))):
        with pytest.raises(DnsError):
            parse_query(data)


# --- build_error ------------------------------------------------------------------------------


def reply_header(reply: bytes | None) -> tuple[int, ...]:
    assert reply is not None
    return struct.unpack_from("!6H", reply)


def test_error_echoes_id_question_and_rd_with_qr_and_rcode() -> None:
    data = query("Example.COM", TYPE_ANY, ident=0xBEEF)
    assert rejects(data) is Rcode.NOTIMP
    reply = build_error(data, Rcode.NOTIMP)
    ident, flags, qd, an, ns, ar = reply_header(reply)
    assert ident == 0xBEEF
    assert flags & 0x8000  # QR
    assert flags & 0x0100  # RD copied
    assert flags & 0x0400 == 0  # never authoritative
    assert flags & 0xF == Rcode.NOTIMP
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    assert reply is not None
    assert reply[12:] == data[12:]  # question echoed exactly, case included


def test_error_without_a_parsable_question_has_only_the_header() -> None:
    data = header(ident=7, qd=2) + query()[12:]
    reply = build_error(data, Rcode.FORMERR)
    assert reply_header(reply) == (7, 0x8181, 0, 0, 0, 0)
    assert reply is not None
    assert len(reply) == 12


def test_error_echoes_the_question_even_when_the_rest_is_malformed() -> None:
    data = query() + b"trailing"
    reply = build_error(data, Rcode.FORMERR)
    assert reply is not None
    assert reply[12:] == query()[12:]


def test_error_includes_opt_when_the_query_had_edns() -> None:
    data = query(qtype=TYPE_ANY, edns=opt(payload=4096, ttl=0x8000))
    reply = build_error(data, Rcode.NOTIMP)
    assert reply is not None
    response = parse_response(reply)
    assert response.rcode == Rcode.NOTIMP
    assert response.edns_payload == 1232
    assert response.question is not None
    assert response.question.qtype == TYPE_ANY


def test_error_copies_the_opcode() -> None:
    data = query(flags=5 << 11)  # UPDATE
    reply = build_error(data, Rcode.NOTIMP)
    _, flags, *_ = reply_header(reply)
    assert (flags >> 11) & 0xF == 5


@pytest.mark.parametrize(
    "data",
    [
        DIG_EDNS_COOKIE,
        DIG_NO_EDNS,
        query() + b"x",
        query(qtype=TYPE_ANY, edns=opt()),
        header(qd=3),
        raw_query(b"\xc0\x0c"),
    ],
)
def test_error_reply_is_never_larger_than_the_query(data: bytes) -> None:
    reply = build_error(data, Rcode.FORMERR)
    assert reply is not None
    assert len(reply) <= len(data)
    parse_response(reply)  # and it is a well-formed message
