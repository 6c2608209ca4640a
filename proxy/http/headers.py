"""Field-section parsing and validation, message framing rules, hop-by-hop stripping.

Everything here works on whole byte strings with C-level operations (split, partition,
translate, count, find): a head is validated with a handful of scans however many fields it
has, and the only Python loop runs once per field line, never once per byte.
"""

from __future__ import annotations

from typing import Final

from .errors import ProtocolError
from .events import Headers

# tchar, RFC 9110 §5.6.2: field names and methods are tokens.
TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEXDIG: Final = b"0123456789abcdefABCDEF"
# A single field value (on send): no CTL but HTAB, so no CR, LF or NUL (RFC 9110 §5.5).
VALUE_OK: Final = bytes([c for c in range(256) if c >= 0x20 and c != 0x7F]) + b"\t"
# A head may contain any octet except the CTLs (RFC 9110 §5.5: field-vchar is VCHAR / obs-text,
# with SP and HTAB between) and CR LF pairs as line ends.
HEAD_OK: Final = VALUE_OK + b"\r\n"
# Host: reg-name / IP-literal / IPv4 and ":" port (RFC 3986 §3.2.2, RFC 9110 §7.2).
HOST_OK: Final = (
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-._~!$&'()*+,;=:[]%"
)


def outside_table(allowed: bytes) -> bytes:
    """A ``bytes.translate`` table mapping each byte of ``allowed`` to 0 and every other byte
    to 1, for ``any_outside``."""
    return bytes(0 if byte in allowed else 1 for byte in range(256))


def any_outside(data: bytes, table: bytes) -> bool:
    """Whether ``data`` holds a byte outside the set ``table`` was made from. One C pass and a
    memchr: ``data.translate(None, allowed)`` answers the same but rebuilds its deletion table
    from ``allowed`` on every call, which cost six times more on a typical value (and these
    checks run a dozen times per proxied request)."""
    return 1 in data.translate(table)


TCHAR_TABLE: Final = outside_table(TCHAR)
HEXDIG_TABLE: Final = outside_table(HEXDIG)
VALUE_TABLE: Final = outside_table(VALUE_OK)
HOST_TABLE: Final = outside_table(HOST_OK)
HEAD_TABLE: Final = outside_table(HEAD_OK)

# Largest Content-Length / chunk size accepted: 2^63 - 1, what a signed 64-bit counter holds
# (llhttp and Envoy reject larger; Python would not overflow, the peer's parsers would).
MAX_LENGTH: Final = (1 << 63) - 1

# Fields the framing and connection logic looks at; everything else is passed through.
SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"}
)

# RFC 9110 §7.6.1 lists Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
# Upgrade; Trailer (§6.6.2) describes this hop's chunked trailers; Proxy-Authenticate and
# Proxy-Authorization (§11.7) are addressed to this proxy, not to the next hop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


def parse_fields(
    head: bytes, lines: list[bytes], start: int, max_headers: int, status: int, too_many: int
) -> tuple[Headers, list[tuple[bytes, bytes]]]:
    """Parse the field lines ``lines[start:]`` of ``head`` (``lines`` is ``head`` split on CRLF).

    Returns all fields (names lowercased, values stripped of SP/HTAB) and the SPECIAL ones.
    The aggregate checks run once over the whole ``head`` (start line included).
    Raises ProtocolError(status) for malformed input, ProtocolError(too_many) over the count.
    """
    crlf = len(lines) - 1
    # Three scans for three rules, however many fields: no CTL but CR, LF and HTAB anywhere
    # (RFC 9110 §5.5: CR, LF and NUL in a value MUST be rejected, other CTLs are invalid too),
    # and as many CRs and LFs as CRLFs split the head, so none is bare (RFC 9112 §2.2 lets a
    # recipient accept a bare LF; a proxy must not, or it and the next hop could split the head
    # differently).
    if any_outside(head, HEAD_TABLE):
        raise ProtocolError("control character in head", status)
    if head.count(13) != crlf or head.count(10) != crlf:  # CR, LF: each only in a CRLF
        raise ProtocolError("bare CR or LF in head", status)
    if len(lines) - start > max_headers:
        raise ProtocolError("too many header fields", too_many)
    headers: Headers = []
    special: list[tuple[bytes, bytes]] = []
    append = headers.append
    names: list[bytes] = []
    add_name = names.append
    for line in lines[start:] if start else lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(_bad_line_reason(line), status)
        add_name(name)
        field = (name.lower(), value.strip(b" \t"))
        append(field)
        if field[0] in SPECIAL:
            special.append(field)
    # Field names are tokens, which rejects whitespace before the colon (RFC 9112 §5.1: a
    # server MUST reject it with 400, a smuggling vector) and obs-fold lines, whose "name"
    # starts with SP or HTAB (RFC 9112 §5.2: reject with 400 or unfold; we reject).
    if any_outside(b"".join(names), TCHAR_TABLE) or b"" in names:
        for name in names:
            if not name:
                raise ProtocolError("empty field name", status)
            if any_outside(name, TCHAR_TABLE):
                raise ProtocolError(_bad_line_reason(name), status)
    return headers, special


def _bad_line_reason(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding"
    if line.rstrip(b" \t") != line:
        return "whitespace before colon"
    return "invalid field line"


def comma_tokens(values: list[bytes]) -> list[bytes]:
    """A #list of tokens from one or more field values, lowercased (RFC 9110 §5.6.1)."""
    tokens = b",".join(values).lower().split(b",")
    return [t.strip(b" \t") for t in tokens]


class Framing:
    """What a head's special fields say about body length and the connection."""

    __slots__ = ("chunked", "connection", "content_length", "expect", "host", "hosts", "upgrade")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.connection: list[bytes] = []
        self.hosts = 0
        self.host = b""
        self.expect: bytes | None = None
        self.upgrade: bytes | None = None


def read_framing(
    special: list[tuple[bytes, bytes]], headers: Headers, http10: bool, status: int
) -> Framing:
    """Interpret Content-Length, Transfer-Encoding, Connection, Host, Expect, Upgrade.

    ``status`` is the status hint for framing errors; 501 for unsupported codings becomes
    ``status`` too when it is not 400 (upstream responses map everything to 502).
    """
    f = Framing()
    if not special:
        return f
    if len(special) == 1 and special[0][0] == b"host":  # most GET requests: Host alone
        f.hosts, f.host = 1, special[0][1]
        return f
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    for name, value in special:
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        elif name == b"connection":
            connection.append(value)
        elif name == b"host":
            f.hosts += 1
            f.host = value
        elif name == b"expect":
            f.expect = value.lower()
        else:
            f.upgrade = value
    if connection:
        f.connection = comma_tokens(connection)
    if codings:
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        if http10:
            raise ProtocolError("transfer-encoding in HTTP/1.0 message", status)
        # RFC 9112 §6.3 item 3: both present is a smuggling attempt; reject and close.
        if lengths:
            raise ProtocolError("both content-length and transfer-encoding", status)
        tokens = comma_tokens(codings)
        if tokens != [b"chunked"]:
            # §6.3 item 4: chunked not final in a request → 400. §6.1: chunked at most once.
            # Otherwise a coding we don't implement ends with chunked → 501 (§6.1).
            if tokens[-1] != b"chunked" or b"chunked" in tokens[:-1] or b"" in tokens:
                raise ProtocolError("transfer-encoding not ending in chunked", status)
            raise ProtocolError("unsupported transfer coding", 501 if status == 400 else status)
        f.chunked = True
    elif lengths:
        # RFC 9110 §8.6: Content-Length = 1*DIGIT. A list ("5, 5"), a sign or anything else is
        # rejected; repeated identical fields are accepted and collapsed (RFC 9112 §6.3 item 5).
        first = lengths[0]
        for value in lengths:
            if value != first:
                raise ProtocolError("conflicting content-length", status)
        if not first.isdigit():
            raise ProtocolError("invalid content-length", status)
        # int() of more than 4300 digits raises ValueError (CVE-2020-10735), so check length
        # first: 19 significant digits already exceed 2^63 - 1 when they start above 9.2e18.
        if len(first.lstrip(b"0")) > 19 or (n := int(first)) > MAX_LENGTH:
            raise ProtocolError("content-length too large", status)
        f.content_length = n
        if len(lengths) > 1:
            seen = False
            for i in range(len(headers) - 1, -1, -1):
                if headers[i][0] == b"content-length":
                    if seen:
                        del headers[i]
                    seen = True
    return f


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Headers to forward: drop the hop-by-hop fields and every field Connection names.

    RFC 9110 §7.6.1: a proxy MUST remove the fields listed in Connection and the Connection
    field itself before forwarding, and SHOULD remove the other hop-by-hop fields. Names are
    compared case-insensitively, so hand-made lists with mixed case are safe too.
    """
    drop = HOP_BY_HOP
    named = [v for n, v in headers if n.lower() == b"connection"]
    if named:
        drop = HOP_BY_HOP.union(comma_tokens(named))
    return [h for h in headers if h[0].lower() not in drop]
