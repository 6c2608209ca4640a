"""Sans-IO DNS message codec for the sidecar's DNS proxy (one module, over the project's ~400
lines, because parsing, name compression and the answer builder share the same bounds and
offsets; splitting them would spread one set of RFC 1035 checks over several files).

The proxy listens on 127.0.0.1:15053 and every packet it reads is untrusted: any local process
can send it bytes, and upstream replies can be spoofed. All byte handling lives here, under
three rules that make it safe to call on anything:

* the only exception a parse raises for bad input is ``DnsError``, which carries the RCODE to
  answer with (``None``: drop silently) and a fixed reason phrase that never contains packet
  bytes, so it is safe in logs and as a metric label;
* every count, length and compression pointer is checked against the limits of RFC 1035
  before it is used, and decoding names costs time linear in the message size however the
  sender nests its pointers;
* a reply is never larger than the query allows (512 octets, or its EDNS payload size), and an
  error reply is never larger than the query it answers, so the proxy is no amplifier.

No I/O, no clock, no DNS library: the caller owns sockets, timers and the cache.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum


class Rcode(IntEnum):
    """Response codes the proxy answers with (RFC 1035 §4.1.1, RFC 6891 §9)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    # Extended RCODE: its upper bits travel in the OPT record's TTL, so a reply carrying it
    # always includes an OPT record (RFC 6891 §6.1.3).
    BADVERS = 16


TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_TKEY = 249
TYPE_TSIG = 250
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_MAILB = 253
TYPE_MAILA = 254
TYPE_ANY = 255
CLASS_IN = 1

# --- Limits, and where they come from ---------------------------------------------------------
HEADER_LEN = 12  # fixed header, RFC 1035 §4.1.1
MAX_LABEL_LEN = 63  # RFC 1035 §2.3.4; on the wire a length octet >= 64 is another label type
MAX_NAME_LEN = 255  # wire octets incl. length octets and the root label, RFC 1035 §2.3.4
CLASSIC_UDP_SIZE = 512  # largest UDP message without EDNS, RFC 1035 §2.3.4 and §4.2.1
MAX_QUERY_SIZE = 4096  # our cap: a real query is < 300 octets, nothing bigger is worth parsing
MAX_EDNS_PAYLOAD = 4096  # our clamp on the requester's size (RFC 6891 §6.2.5 suggests 4096)
REPLY_EDNS_PAYLOAD = 1232  # what we advertise: DNS flag day 2020, avoids IP fragmentation
MAX_MESSAGE_SIZE = 65535  # two-octet length prefix over TCP, RFC 1035 §4.2.2
MAX_TTL = 0x7FFFFFFF  # RFC 2181 §8: TTLs are 31-bit; a set top bit is read as zero
# Pointers must jump strictly backwards, so they cannot loop; the hop cap is a sanity bound on
# top. Each legitimate hop adds at least one label, and a 255-octet name has at most 127 labels
# (RFC 1035 §2.3.4), so real messages never come close.
MAX_POINTER_HOPS = 127

# --- Header bits (RFC 1035 §4.1.1) ------------------------------------------------------------
_QR = 0x8000
_OPCODE_MASK = 0x7800
_OPCODE_SHIFT = 11
_OPCODE_QUERY = 0
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_RCODE_MASK = 0x000F
_EDNS_DO = 0x8000  # DNSSEC OK bit in the OPT record's TTL, RFC 3225 §3

_HEADER = struct.Struct("!6H")
_ID_FLAGS = struct.Struct("!2H")
_COUNTS = struct.Struct("!4H")
_QUESTION_TAIL = struct.Struct("!2H")  # QTYPE, QCLASS
_RR_TAIL = struct.Struct("!2HIH")  # TYPE, CLASS, TTL, RDLENGTH (RFC 1035 §4.1.3)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

_ROOT = b"\x00"
_POINTER_TO_QUESTION = b"\xc0\x0c"  # offset 12: the question name, right after the header
_LABEL_TYPE_MASK = 0xC0
_LABEL_TYPE_POINTER = 0xC0

# QTYPEs we do not serve: zone transfers and the obsolete mail meta-queries are not for a
# sidecar, and ANY is the classic amplification vector (see RFC 8482).
_NOTIMP_QTYPES = frozenset({TYPE_IXFR, TYPE_AXFR, TYPE_MAILB, TYPE_MAILA, TYPE_ANY})
# Reserved type 0 and meta-records that only exist in the additional section (RFC 6895 §3.1):
# asking for them is a malformed question.
_FORMERR_QTYPES = frozenset({0, TYPE_OPT, TYPE_TKEY, TYPE_TSIG})
# Label octets allowed in owner names: printable ASCII except '.', so a name is unambiguous as
# a dotted string and nothing downstream ever needs escaping.
_LABEL_OCTETS = bytes(range(0x20, 0x7F)).replace(b".", b"")
# RDATA whose names may be compressed and which we expand so Record.data stands on its own:
# (octets before the names, number of names, octets after). RFC 3597 §4 lists the types a
# receiver must (NS..MX) or should (RP, AFSDB, RT, SRV) decompress.
_COMPRESSIBLE_RDATA: dict[int, tuple[int, int, int]] = {
    TYPE_NS: (0, 1, 0),
    3: (0, 1, 0),  # MD
    4: (0, 1, 0),  # MF
    TYPE_CNAME: (0, 1, 0),
    TYPE_SOA: (0, 2, 20),  # MNAME, RNAME, then SERIAL REFRESH RETRY EXPIRE MINIMUM
    7: (0, 1, 0),  # MB
    8: (0, 1, 0),  # MG
    9: (0, 1, 0),  # MR
    TYPE_PTR: (0, 1, 0),
    14: (0, 2, 0),  # MINFO
    TYPE_MX: (2, 1, 0),
    17: (0, 2, 0),  # RP
    18: (2, 1, 0),  # AFSDB
    21: (2, 1, 0),  # RT
    TYPE_SRV: (6, 1, 0),  # priority, weight, port, target
}
_FIXED_RDATA = {TYPE_A: 4, TYPE_AAAA: 16}  # RFC 1035 §3.4.1, RFC 3596 §2.2
_SOA_MIN_RDATA = 22  # two root names plus five 32-bit fields, RFC 1035 §3.3.13


class DnsError(Exception):
    """A packet we will not process.

    ``rcode`` is what to answer with, or ``None`` to drop silently (e.g. a response sent to our
    listener, where answering could start a ping-pong between two servers). ``reason`` is a
    fixed snake_case token, never packet bytes, so it is safe in logs and as a metric label.
    """

    def __init__(self, rcode: Rcode | None, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


class _ShortMessage(DnsError):
    """The message ended inside a name or record: tolerated in a truncated (TC=1) response."""


@dataclass(frozen=True)
class Question:
    name: str  # lower-case, no trailing dot, "" for the root
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Query:
    id: int
    flags: int  # raw header flags, as received
    question: Question
    recursion_desired: bool
    edns_payload: int | None  # requester's UDP size clamped to [512, 4096]; None without EDNS
    raw_question: bytes  # the question section as received (keeps 0x20 case), for echoing
    dnssec_ok: bool = False  # the OPT DO bit, echoed in our OPT (RFC 3225 §3)


@dataclass(frozen=True)
class Record:
    name: str  # lower-case, no trailing dot
    rtype: int
    rclass: int
    ttl: int
    data: bytes  # RDATA; names in it are never compressed (parse_response expands them)


@dataclass(frozen=True)
class Response:
    id: int
    rcode: int  # full RCODE, extended bits from the OPT record included
    truncated: bool
    question: Question | None
    answers: tuple[Record, ...]
    authority: tuple[Record, ...]
    additional: tuple[Record, ...] = ()  # without the OPT record
    flags: int = 0  # raw header flags
    edns_payload: int | None = None  # the responder's advertised size, raw; None without OPT


@dataclass(frozen=True)
class _Opt:
    payload: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True)
class _QueryParts:
    """A query's sections, structurally valid but not yet checked against what we serve."""

    id: int
    flags: int
    question: Question
    raw_question: bytes
    opt: _Opt | None


# --- Names --------------------------------------------------------------------------------------

# From a position to the root: the labels, their wire size (root excluded), pointer hops taken.
_Suffix = tuple[tuple[bytes, ...], int, int]


class _NameReader:
    """Decodes the names of one message, compressed or not (RFC 1035 §4.1.4).

    A pointer must jump strictly below every position this name has visited so far, which
    rules out loops, self references and forward references. Every position decoded is
    memoised, so a message stuffed with pointer chains costs time linear in its size rather
    than names x chain length.
    """

    def __init__(self, data: bytes, rcode: Rcode, allow_pointers: bool) -> None:
        self._data = data
        self._rcode = rcode
        self._allow_pointers = allow_pointers
        self._seen: dict[int, _Suffix] = {}

    def read(self, offset: int) -> tuple[tuple[bytes, ...], int]:
        """The raw labels of the name at ``offset`` and the offset just past it in place."""
        labels: list[bytes] = []
        visited: list[tuple[int, int, int]] = []  # (position, labels and hops before it)
        tail: tuple[bytes, ...] = ()
        tail_size = 0
        size = 0  # wire octets so far, without the root label
        end: int | None = None
        pos = floor = offset
        hops = 0
        while True:
            visited.append((pos, len(labels), hops))
            length = _octet(self._data, pos, self._rcode)
            if length == 0:
                end = pos + 1 if end is None else end
                break
            if length & _LABEL_TYPE_MASK == 0:
                labels.append(self._label(pos, length))
                size = self._grow(size, length + 1)
                pos += length + 1
                continue
            target = self._pointer(pos, floor)
            end = pos + 2 if end is None else end
            hops = self._hop(hops, 1)
            cached = self._seen.get(target)
            if cached is not None:
                tail, tail_size, tail_hops = cached
                size = self._grow(size, tail_size)
                hops = self._hop(hops, tail_hops)
                break
            pos = floor = target
        full = tuple(labels) + tail
        self._remember(visited, labels, full, tail_size, hops)
        return full, end

    def _label(self, pos: int, length: int) -> bytes:
        end = pos + 1 + length
        if end > len(self._data):
            raise _ShortMessage(self._rcode, "name_runs_past_the_end")
        return self._data[pos + 1 : end]

    def _pointer(self, pos: int, floor: int) -> int:
        """The target of the pointer at ``pos``, refusing anything but a strict backward jump."""
        first = self._data[pos]
        if first & _LABEL_TYPE_MASK != _LABEL_TYPE_POINTER:
            # 0b01 (extended, RFC 6891 §5 deprecated it) and 0b10 are not label types we know.
            raise DnsError(self._rcode, "reserved_label_type")
        if not self._allow_pointers:
            raise DnsError(self._rcode, "compression_pointer_in_query")
        target = ((first & 0x3F) << 8) | _octet(self._data, pos + 1, self._rcode)
        if target < HEADER_LEN or target >= floor:
            raise DnsError(self._rcode, "bad_compression_pointer")
        return target

    def _hop(self, hops: int, more: int) -> int:
        hops += more
        if hops > MAX_POINTER_HOPS:
            raise DnsError(self._rcode, "too_many_compression_pointers")
        return hops

    def _grow(self, size: int, octets: int) -> int:
        size += octets
        if size + len(_ROOT) > MAX_NAME_LEN:
            raise DnsError(self._rcode, "name_too_long")
        return size

    def _remember(
        self,
        visited: list[tuple[int, int, int]],
        labels: list[bytes],
        full: tuple[bytes, ...],
        tail_size: int,
        hops: int,
    ) -> None:
        """Memoise every position this walk visited. Only the labels read in this walk are
        looped over, so a name resolved from the memo costs O(1) Python steps, and the hop
        count travels with it so the cap does not depend on the order names are read in."""
        sizes = [0] * len(labels) + [tail_size]  # sizes[i]: wire size of full[i:], no root
        for i in range(len(labels) - 1, -1, -1):
            sizes[i] = sizes[i + 1] + len(labels[i]) + 1
        for pos, index, hops_before in visited:
            self._seen[pos] = (full[index:], sizes[index], hops - hops_before)


def _octet(data: bytes, pos: int, rcode: Rcode) -> int:
    if pos >= len(data):
        raise _ShortMessage(rcode, "name_runs_past_the_end")
    return data[pos]


def _name_text(labels: tuple[bytes, ...], rcode: Rcode) -> str:
    """An owner name as a lower-case dotted string.

    Refuses octets that would make that string ambiguous (a '.' inside a label) or unsafe to
    log (control characters, non-ASCII), since names end up as dict keys, logs and metrics.
    """
    joined = b".".join(labels)
    # Deleting every allowed octet must leave exactly the separators joined in, nothing else.
    if len(joined.translate(None, _LABEL_OCTETS)) != max(len(labels) - 1, 0):
        raise DnsError(rcode, "bad_octet_in_name")
    return joined.decode("ascii").lower()


def _wire_name(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + _ROOT


def normalize_name(name: str) -> str:
    """The form names are compared in: lower-case, without the trailing dot."""
    return name.removesuffix(".").lower()


def encode_name(name: str) -> bytes:
    """The uncompressed wire form of a dotted name ("" or "." is the root).

    Raises ValueError, not DnsError: names we encode come from our own config, so a bad one
    is a bug to surface, not a packet to answer.
    """
    text = name.removesuffix(".")
    if not text:
        return _ROOT
    labels = tuple(label.encode("ascii") for label in text.split("."))  # ValueError if not
    for label in labels:
        if not label or len(label) > MAX_LABEL_LEN or label.translate(None, _LABEL_OCTETS):
            raise ValueError(f"invalid DNS name {name!r}")
    wire = _wire_name(labels)
    if len(wire) > MAX_NAME_LEN:
        raise ValueError(f"DNS name longer than {MAX_NAME_LEN} octets: {name!r}")
    return wire


# --- Queries ------------------------------------------------------------------------------------


def parse_query(data: bytes) -> Query:
    """Parse a query from a client, refusing anything we would not answer.

    The question may not use compression at all: a query's question is the first name in the
    message, so there is nothing earlier it could legitimately point to, and the OPT owner
    must be the root (RFC 6891 §6.1.2). Raises DnsError only.
    """
    _check_query_header(data)
    parts = _parse_query_sections(data)
    _check_query_policy(parts)
    opt = parts.opt
    return Query(
        id=parts.id,
        flags=parts.flags,
        question=parts.question,
        recursion_desired=bool(parts.flags & _RD),
        edns_payload=None if opt is None else _clamp_payload(opt.payload),
        raw_question=parts.raw_question,
        dnssec_ok=opt is not None and opt.dnssec_ok,
    )


def _check_query_header(data: bytes) -> None:
    if len(data) < HEADER_LEN:
        raise DnsError(None, "short_header")  # not even an ID to answer to
    _, flags = _ID_FLAGS.unpack_from(data)
    if flags & _QR:
        raise DnsError(None, "response_sent_to_listener")  # answering could loop
    if len(data) > MAX_QUERY_SIZE:
        raise DnsError(Rcode.FORMERR, "query_too_large")
    if (flags & _OPCODE_MASK) >> _OPCODE_SHIFT != _OPCODE_QUERY:
        raise DnsError(Rcode.NOTIMP, "opcode_not_supported")


def _parse_query_sections(data: bytes) -> _QueryParts:
    """Counts, question and optional OPT, with nothing after them. Shared with build_error,
    which echoes whatever of this parses."""
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise DnsError(Rcode.FORMERR, "question_count_is_not_1")
    if ancount or nscount or arcount > 1:
        raise DnsError(Rcode.FORMERR, "unexpected_records_in_query")
    reader = _NameReader(data, Rcode.FORMERR, allow_pointers=False)
    question, end = _read_question(reader, data, HEADER_LEN, Rcode.FORMERR)
    raw_question = data[HEADER_LEN:end]
    opt = None
    if arcount:
        opt, end = _read_query_opt(reader, data, end)
    if end != len(data):
        raise DnsError(Rcode.FORMERR, "trailing_data")
    return _QueryParts(ident, flags, question, raw_question, opt)


def _read_question(
    reader: _NameReader, data: bytes, pos: int, rcode: Rcode
) -> tuple[Question, int]:
    labels, pos = reader.read(pos)
    if pos + _QUESTION_TAIL.size > len(data):
        raise _ShortMessage(rcode, "question_runs_past_the_end")
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, pos)
    return Question(_name_text(labels, rcode), qtype, qclass), pos + _QUESTION_TAIL.size


def _read_query_opt(reader: _NameReader, data: bytes, pos: int) -> tuple[_Opt, int]:
    """The one additional record a query may carry: OPT (RFC 6891 §6.1.2)."""
    labels, pos = reader.read(pos)
    rtype, payload, ttl, start, end = _read_rr_tail(data, pos, Rcode.FORMERR)
    if rtype != TYPE_OPT:
        raise DnsError(Rcode.FORMERR, "additional_record_is_not_opt")
    if labels:
        raise DnsError(Rcode.FORMERR, "opt_owner_is_not_the_root")
    _check_edns_options(data, start, end, Rcode.FORMERR)
    return _Opt(payload, (ttl >> 16) & 0xFF, bool(ttl & _EDNS_DO)), end


def _read_rr_tail(data: bytes, pos: int, rcode: Rcode) -> tuple[int, int, int, int, int]:
    """TYPE, CLASS, TTL and the RDATA bounds of the record whose fixed part is at ``pos``."""
    start = pos + _RR_TAIL.size
    if start > len(data):
        raise _ShortMessage(rcode, "record_runs_past_the_end")
    rtype, rclass, ttl, rdlength = _RR_TAIL.unpack_from(data, pos)
    end = start + rdlength
    if end > len(data):
        raise _ShortMessage(rcode, "record_data_runs_past_the_end")
    return rtype, rclass, ttl, start, end


def _check_edns_options(data: bytes, pos: int, end: int, rcode: Rcode) -> None:
    """OPT RDATA must be whole {code, length, data} options (RFC 6891 §6.1.2). We use none of
    them (an unknown option is ignored, §6.1.2), but a malformed list is a malformed OPT."""
    while pos < end:
        if pos + 4 > end:
            raise DnsError(rcode, "malformed_edns_option")
        (length,) = _U16.unpack_from(data, pos + 2)
        pos += 4 + length
        if pos > end:
            raise DnsError(rcode, "malformed_edns_option")


def _check_query_policy(parts: _QueryParts) -> None:
    """What we serve, checked after the structure so build_error can still echo the question."""
    if parts.opt is not None and parts.opt.version != 0:
        raise DnsError(Rcode.BADVERS, "edns_version_not_supported")  # RFC 6891 §6.1.3
    question = parts.question
    if question.qtype in _FORMERR_QTYPES:
        raise DnsError(Rcode.FORMERR, "meta_type_in_question")
    if question.qtype in _NOTIMP_QTYPES:
        raise DnsError(Rcode.NOTIMP, "query_type_not_served")
    if question.qclass != CLASS_IN:
        raise DnsError(Rcode.NOTIMP, "query_class_not_served")


def _clamp_payload(payload: int) -> int:
    # Below 512 means 512 (RFC 6891 §6.2.5); above 4096 is more than we will ever send.
    return min(max(payload, CLASSIC_UDP_SIZE), MAX_EDNS_PAYLOAD)


# --- Replies we build ---------------------------------------------------------------------------


def build_answer(
    query: Query,
    rcode: Rcode,
    answers: Sequence[Record] = (),
    max_size: int | None = None,
    authoritative: bool = True,
) -> bytes:
    """A reply to ``query`` from local data.

    ``max_size`` None means the UDP rules: 512 octets, or the requester's EDNS payload size.
    Pass the transport's own limit to override (e.g. 65535 over TCP; larger values are capped
    there). If the message does not fit, all answers are dropped and TC is set so the client
    retries over TCP — never a partial RRset a client could cache (RFC 2181 §9). The
    truncated form (header, question, OPT) is sent even if it exceeds a tiny ``max_size``,
    so ``max_size=0`` always yields a TC=1 reply.
    Raises ValueError for a record or RCODE we cannot encode (a bug, not a packet).
    """
    if rcode > _RCODE_MASK and query.edns_payload is None:
        raise ValueError("an extended RCODE needs an EDNS query")  # no OPT allowed, RFC 6891 §7
    records = b"".join(_encode_record(record, query.question.name) for record in answers)
    opt = _opt_record(rcode, query.dnssec_ok) if query.edns_payload is not None else b""
    flags = _answer_flags(query, rcode, authoritative)
    arcount = 1 if opt else 0
    header = _HEADER.pack(query.id, flags, 1, len(answers), 0, arcount)
    message = header + query.raw_question + records + opt
    if len(message) <= _reply_limit(query, max_size):
        return message
    header = _HEADER.pack(query.id, flags | _TC, 1, 0, 0, arcount)
    return header + query.raw_question + opt


def _answer_flags(query: Query, rcode: Rcode, authoritative: bool) -> int:
    flags = _QR | _RA | (query.flags & _RD) | (rcode & _RCODE_MASK)
    # AA only where our data is the authority: a name we know, or know not to exist.
    if authoritative and rcode in (Rcode.NOERROR, Rcode.NXDOMAIN):
        flags |= _AA
    return flags


def _reply_limit(query: Query, max_size: int | None) -> int:
    if max_size is None:
        return CLASSIC_UDP_SIZE if query.edns_payload is None else query.edns_payload
    return min(max_size, MAX_MESSAGE_SIZE)


def _encode_record(record: Record, question_name: str) -> bytes:
    for value, bits in ((record.rtype, 16), (record.rclass, 16), (len(record.data), 16)):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"record field out of range: {record!r}")
    if not 0 <= record.ttl <= MAX_TTL:
        raise ValueError(f"TTL out of range: {record.ttl}")
    name = normalize_name(record.name)
    owner = _POINTER_TO_QUESTION if name and name == question_name else encode_name(name)
    rr_tail = _RR_TAIL.pack(record.rtype, record.rclass, record.ttl, len(record.data))
    return owner + rr_tail + record.data


def _opt_record(rcode: int, dnssec_ok: bool) -> bytes:
    """Our OPT (RFC 6891 §6.1.2): root owner, payload 1232, the RCODE's upper bits, version 0,
    and the requester's DO bit echoed (RFC 3225 §3)."""
    ttl = ((rcode >> 4) << 24) | (_EDNS_DO if dnssec_ok else 0)
    return _ROOT + _RR_TAIL.pack(TYPE_OPT, REPLY_EDNS_PAYLOAD, ttl, 0)


def build_error(data: bytes, rcode: Rcode) -> bytes | None:
    """A minimal error reply to a packet parse_query refused; None means drop it.

    Echoes the ID, opcode and RD, and the question (plus an OPT) only if they parsed. Never
    answers a packet with QR set (two servers could bounce errors forever) or one too short to
    have an ID. The reply is never larger than ``data``: header, the query's own question, and
    an OPT only when the query had one — so refusing cannot be used for amplification.
    """
    if len(data) < HEADER_LEN:
        return None
    ident, flags = _ID_FLAGS.unpack_from(data)
    if flags & _QR:
        return None
    raw_question, opt = _salvage_query(data)
    if opt is None and rcode > _RCODE_MASK:
        rcode = Rcode.FORMERR  # an extended RCODE needs an OPT, and this query had none
    reply_flags = _QR | _RA | (flags & (_OPCODE_MASK | _RD)) | (rcode & _RCODE_MASK)
    opt_bytes = b"" if opt is None else _opt_record(rcode, opt.dnssec_ok)
    header = _HEADER.pack(ident, reply_flags, 1 if raw_question else 0, 0, 0, 1 if opt else 0)
    return header + raw_question + opt_bytes


def _salvage_query(data: bytes) -> tuple[bytes, _Opt | None]:
    """Whatever of the query is sound enough to echo: the whole structure, else the question."""
    try:
        parts = _parse_query_sections(data)
    except DnsError:
        return _salvage_question(data), None
    return parts.raw_question, parts.opt


def _salvage_question(data: bytes) -> bytes:
    (qdcount,) = _U16.unpack_from(data, 4)
    if qdcount != 1:
        return b""
    reader = _NameReader(data, Rcode.FORMERR, allow_pointers=False)
    try:
        _, end = _read_question(reader, data, HEADER_LEN, Rcode.FORMERR)
    except DnsError:
        return b""
    return data[HEADER_LEN:end]


def a_record(name: str, address: str, ttl: int) -> Record:
    """An A record; raises ValueError for a bad name, address or TTL."""
    return _address_record(name, TYPE_A, ipaddress.IPv4Address(address).packed, ttl)


def aaaa_record(name: str, address: str, ttl: int) -> Record:
    """An AAAA record; raises ValueError for a bad name, address or TTL."""
    return _address_record(name, TYPE_AAAA, ipaddress.IPv6Address(address).packed, ttl)


def _address_record(name: str, rtype: int, packed: bytes, ttl: int) -> Record:
    encode_name(name)  # fail here, at config time, rather than when answering
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"TTL out of range: {ttl}")
    return Record(normalize_name(name), rtype, CLASS_IN, ttl, packed)


# --- Upstream responses -------------------------------------------------------------------------


def parse_response(data: bytes) -> Response:
    """Parse an upstream reply as defensively as a query: upstream can be spoofed.

    Every failure is DnsError(SERVFAIL): that is what the client should hear when upstream
    talks nonsense. Names in RDATA are expanded so Record.data needs no message context. A
    truncated (TC=1) reply may stop mid-record (RFC 2181 §9); the complete records are kept.
    """
    rcode = Rcode.SERVFAIL
    if len(data) < HEADER_LEN:
        raise DnsError(rcode, "short_header")
    if len(data) > MAX_MESSAGE_SIZE:
        raise DnsError(rcode, "response_too_large")
    ident, flags = _ID_FLAGS.unpack_from(data)
    qdcount, *counts = _COUNTS.unpack_from(data, 4)
    if not flags & _QR:
        raise DnsError(rcode, "not_a_response")
    if qdcount > 1:
        raise DnsError(rcode, "more_than_one_question")
    reader = _NameReader(data, rcode, allow_pointers=True)
    question, pos = None, HEADER_LEN
    if qdcount:
        question, pos = _read_question(reader, data, pos, rcode)
    truncated = bool(flags & _TC)
    answers, authority, additional = _read_sections(reader, data, pos, counts, truncated)
    opt = _split_opt(answers, authority, additional)
    full_rcode = flags & _RCODE_MASK
    if opt is not None:
        full_rcode |= (opt.ttl >> 24) << 4  # extended RCODE, RFC 6891 §6.1.3
        additional = [record for record in additional if record is not opt]
    return Response(
        id=ident,
        rcode=full_rcode,
        truncated=truncated,
        question=question,
        answers=tuple(answers),
        authority=tuple(authority),
        additional=tuple(additional),
        flags=flags,
        edns_payload=None if opt is None else opt.rclass,
    )


def _read_sections(
    reader: _NameReader, data: bytes, pos: int, counts: list[int], truncated: bool
) -> tuple[list[Record], list[Record], list[Record]]:
    sections: tuple[list[Record], list[Record], list[Record]] = ([], [], [])
    try:
        for records, count in zip(sections, counts, strict=True):
            for _ in range(count):
                record, pos = _read_record(reader, data, pos)
                records.append(record)
    except _ShortMessage:
        if not truncated:
            raise
    else:
        if pos != len(data):
            raise DnsError(Rcode.SERVFAIL, "trailing_data")
    return sections


def _read_record(reader: _NameReader, data: bytes, pos: int) -> tuple[Record, int]:
    rcode = Rcode.SERVFAIL
    labels, pos = reader.read(pos)
    rtype, rclass, ttl, start, end = _read_rr_tail(data, pos, rcode)
    if rtype == TYPE_OPT:
        if labels:
            raise DnsError(rcode, "opt_owner_is_not_the_root")
        _check_edns_options(data, start, end, rcode)
        rdata = data[start:end]  # the TTL field is EDNS flags: left as is
    else:
        ttl = ttl if ttl <= MAX_TTL else 0
        rdata = _read_rdata(reader, data, rtype, start, end)
    return Record(_name_text(labels, rcode), rtype, rclass, ttl, rdata), end


def _read_rdata(reader: _NameReader, data: bytes, rtype: int, start: int, end: int) -> bytes:
    rcode = Rcode.SERVFAIL
    fixed = _FIXED_RDATA.get(rtype)
    if fixed is not None and end - start != fixed:
        raise DnsError(rcode, "bad_address_length")
    layout = _COMPRESSIBLE_RDATA.get(rtype)
    if layout is None:
        return data[start:end]
    before, names, after = layout
    pos = start + before
    parts = [data[start:pos]]
    for _ in range(names):
        if pos >= end:
            raise DnsError(rcode, "record_data_too_short")
        labels, pos = reader.read(pos)
        parts.append(_wire_name(labels))
    if pos + after != end:
        raise DnsError(rcode, "record_data_length_mismatch")
    parts.append(data[pos:end])
    return b"".join(parts)


def _split_opt(
    answers: list[Record], authority: list[Record], additional: list[Record]
) -> Record | None:
    """The one OPT a message may carry, and only in the additional section (RFC 6891 §6.1.1)."""
    if any(record.rtype == TYPE_OPT for record in (*answers, *authority)):
        raise DnsError(Rcode.SERVFAIL, "opt_outside_the_additional_section")
    opts = [record for record in additional if record.rtype == TYPE_OPT]
    if len(opts) > 1:
        raise DnsError(Rcode.SERVFAIL, "more_than_one_opt")
    return opts[0] if opts else None


# --- Caching helpers ----------------------------------------------------------------------------


def cache_ttl(response: Response, negative_default: int = 30, cap: int = 300) -> int | None:
    """Seconds the response may be served from cache, or None if it must not be cached.

    Positive answers live as long as their shortest TTL. NXDOMAIN and NODATA live as long as
    the SOA in the authority section says (min of its TTL and MINIMUM, RFC 2308 §5), else
    ``negative_default``. Truncated replies and other RCODEs (SERVFAIL, REFUSED, ...) are not
    cached, and neither is a TTL of 0 ("use only for this transaction", RFC 1035 §3.2.1).
    """
    if response.truncated:
        return None
    if response.rcode == Rcode.NOERROR and response.answers:
        ttl = min(record.ttl for record in response.answers)
    elif response.rcode in (Rcode.NOERROR, Rcode.NXDOMAIN):
        ttl = _negative_ttl(response.authority, negative_default)
    else:
        return None
    ttl = min(ttl, cap)
    return ttl if ttl > 0 else None


def _negative_ttl(authority: Sequence[Record], default: int) -> int:
    ttls = [
        min(record.ttl, _soa_minimum(record.data))
        for record in authority
        if record.rtype == TYPE_SOA and len(record.data) >= _SOA_MIN_RDATA
    ]
    return min(ttls) if ttls else default


def _soa_minimum(rdata: bytes) -> int:
    # MINIMUM is the last field (RFC 1035 §3.3.13), whatever the two names before it are.
    (minimum,) = _U32.unpack_from(rdata, len(rdata) - _U32.size)
    return minimum if minimum <= MAX_TTL else 0


def with_id_and_ttl(response_bytes: bytes, new_id: int, elapsed: int) -> bytes:
    """A cached reply made fresh for a new query: its ID, and every TTL minus ``elapsed``.

    Walks the message in place without decoding names, so it keeps the upstream's exact bytes
    (compression, case, record order). TTLs floor at 0; the OPT record's TTL field holds EDNS
    flags, not a TTL, and is left alone. Raises DnsError(SERVFAIL) if the bytes do not walk.
    """
    if not 0 <= new_id <= 0xFFFF:
        raise ValueError(f"DNS ID out of range: {new_id}")
    if elapsed < 0:
        raise ValueError(f"elapsed must not be negative: {elapsed}")
    rcode = Rcode.SERVFAIL
    if len(response_bytes) < HEADER_LEN:
        raise DnsError(rcode, "short_header")
    message = bytearray(response_bytes)
    _U16.pack_into(message, 0, new_id)
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(response_bytes, 4)
    pos = HEADER_LEN
    for _ in range(qdcount):
        pos = _skip_name(response_bytes, pos, rcode) + _QUESTION_TAIL.size
    for _ in range(ancount + nscount + arcount):
        pos = _skip_name(response_bytes, pos, rcode)
        rtype, _, ttl, _, end = _read_rr_tail(response_bytes, pos, rcode)
        if rtype != TYPE_OPT:
            ttl = ttl if ttl <= MAX_TTL else 0
            _U32.pack_into(message, pos + 4, max(ttl - elapsed, 0))
        pos = end
    if pos > len(response_bytes):
        raise DnsError(rcode, "question_runs_past_the_end")
    return bytes(message)


def _skip_name(data: bytes, pos: int, rcode: Rcode) -> int:
    """The offset just past the name at ``pos``, without following pointers."""
    while True:
        length = _octet(data, pos, rcode)
        if length == 0:
            return pos + 1
        kind = length & _LABEL_TYPE_MASK
        if kind == _LABEL_TYPE_POINTER:
            _octet(data, pos + 1, rcode)
            return pos + 2
        if kind:
            raise DnsError(rcode, "reserved_label_type")
        pos += length + 1
