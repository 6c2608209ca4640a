"""Protocol sniffing: from the first bytes a client sends, tell TLS, HTTP/2, HTTP/1.x or opaque TCP.

Pure and incremental: the listener calls ``detect`` with everything read so far; ``None`` means
"need more bytes", any other answer is final and stays the same however many more bytes come.
Each protocol is decided as early as its bytes allow (HTTP/1 on the method and one space,
opaque TCP on the first byte that no signature can start with), so a client-first connection
costs no waiting. Server-first protocols send nothing until the server speaks: the listener
skips sniffing on DEFAULT_SKIP_PORTS and gives up after DEFAULT_DETECT_TIMEOUT for the rest.

For TLS the ClientHello is parsed for SNI (RFC 6066 §3) and ALPN (RFC 7301 §3.1), which the
router uses like a Host header. The parser trusts no length: anything malformed, or a hello
longer than MAX_CLIENT_HELLO_BYTES, is still TLS, only without SNI and ALPN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Protocol = Literal["tls", "http2", "http1", "tcp"]

# Linkerd's default opaque/skip ports: SMTP, submission, MySQL, Galera, PostgreSQL, Redis,
# Elasticsearch transport, memcached. Their servers speak first (a banner or a handshake), so
# a client waiting for its greeting would only ever give the sniffer the timeout.
DEFAULT_SKIP_PORTS: frozenset[int] = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})

# Seconds to wait for a client's first bytes before calling the connection opaque TCP: Istio's
# protocolDetectionTimeout default was 100 ms.
DEFAULT_DETECT_TIMEOUT = 0.1

# One full TLS record (2^14 bytes of plaintext, RFC 8446 §5.1) plus its 5-byte header: real
# ClientHellos fit in one record, and a sniffer must not buffer without bound.
MAX_CLIENT_HELLO_BYTES = 16 * 1024 + 5

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
# RFC 9110 §9 plus PATCH (RFC 5789). Case-sensitive: "get " is not HTTP.
HTTP1_METHODS = (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Detected:
    """What the first bytes say. ``sni`` and ``alpn`` are only ever set for "tls"."""

    protocol: Protocol
    sni: str | None = None
    alpn: tuple[str, ...] = ()


TCP = Detected("tcp")
HTTP1 = Detected("http1")
HTTP2 = Detected("http2")
TLS_UNKNOWN = Detected("tls")  # TLS whose ClientHello could not be read (too long, malformed)

# Plaintext signatures: a connection that starts with one is that protocol. HTTP/1 is decided
# on "METHOD " alone, which is enough: no other protocol we tell apart starts that way.
_SIGNATURES: tuple[tuple[bytes, Detected], ...] = (
    (HTTP2_PREFACE, HTTP2),
    *((method + b" ", HTTP1) for method in HTTP1_METHODS),
)

_HANDSHAKE = 0x16  # TLS record content type (RFC 8446 §5.1)
_CLIENT_HELLO = 0x01  # handshake message type (RFC 8446 §4)
_EXT_SERVER_NAME = 0  # RFC 6066 §3
_EXT_ALPN = 16  # RFC 7301 §3.1
_HOST_NAME = 0  # NameType host_name (RFC 6066 §3)
_RECORD_HEADER = 5
_MAX_RECORD_PLAINTEXT = 2**14


def detect(data: bytes) -> Detected | None:
    """Classify a connection from its first bytes, or None while more bytes could change it."""
    if not data:
        return None
    if data[0] == _HANDSHAKE:
        return _detect_tls(data)
    return _detect_plaintext(data)


def _detect_plaintext(data: bytes) -> Detected | None:
    """A signature the data starts with wins; data that is still a prefix of one waits."""
    waiting = False
    for signature, result in _SIGNATURES:
        if data.startswith(signature):
            return result
        if signature.startswith(data):
            waiting = True
    return None if waiting else TCP


def _detect_tls(data: bytes) -> Detected | None:
    """A TLS record header (0x16 0x03 0x00..0x04) commits to TLS; then wait for the whole
    ClientHello (up to the bound) to read SNI and ALPN out of it."""
    if len(data) < 3:
        return None if data[1:] in (b"", b"\x03") else TCP
    if data[1] != 0x03 or data[2] > 0x04:
        return TCP  # SSL 3.0 .. TLS 1.3 record versions only; anything else is not TLS
    window = data[:MAX_CLIENT_HELLO_BYTES]
    try:
        hello = _client_hello(window)
    except _Malformed:
        return TLS_UNKNOWN
    if hello is None:
        return TLS_UNKNOWN if len(data) >= MAX_CLIENT_HELLO_BYTES else None
    try:
        return _parse_client_hello(hello)
    except _Malformed:
        return TLS_UNKNOWN


class _Malformed(Exception):
    """A length or a field that contradicts the RFCs: the answer is TLS without SNI."""


def _client_hello(data: bytes) -> bytes | None:
    """The ClientHello body, reassembled from as many handshake records as it spans, or None
    while it is incomplete. Raises _Malformed for a record or message that cannot be one."""
    message = bytearray()
    offset = 0
    while True:
        body = _whole_message(message)
        if body is not None:
            return body
        if len(data) < offset + _RECORD_HEADER:
            return None
        _check_record_header(data[offset : offset + _RECORD_HEADER])
        size = int.from_bytes(data[offset + 3 : offset + 5], "big")
        fragment = data[offset + _RECORD_HEADER : offset + _RECORD_HEADER + size]
        message += fragment
        if len(fragment) < size:
            # Partial record: the hello may already be whole in it; if not, wait.
            return _whole_message(message)
        offset += _RECORD_HEADER + size


def _check_record_header(header: bytes) -> None:
    """RFC 8446 §5.1: a handshake record, a 3.x version, 1 .. 2^14 bytes of fragment."""
    size = int.from_bytes(header[3:5], "big")
    if header[0] != _HANDSHAKE or header[1] != 0x03:
        raise _Malformed("ClientHello continued in a record that is not a handshake record")
    if not 0 < size <= _MAX_RECORD_PLAINTEXT:
        raise _Malformed(f"handshake record of {size} bytes")


def _whole_message(message: bytearray) -> bytes | None:
    """The ClientHello body if ``message`` already holds all of it. A declared length that
    cannot fit under the bound is refused at once instead of waiting for bytes never read."""
    if len(message) < 4:
        return None
    if message[0] != _CLIENT_HELLO:
        raise _Malformed("first handshake message is not a ClientHello")
    length = int.from_bytes(message[1:4], "big")
    if 4 + length + _RECORD_HEADER > MAX_CLIENT_HELLO_BYTES:
        raise _Malformed("ClientHello longer than the sniffing bound")
    return bytes(message[4 : 4 + length]) if len(message) >= 4 + length else None


class _Reader:
    """A cursor over bytes whose every read checks that the bytes are there."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise _Malformed(f"{size} bytes announced, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        """A ``<..>`` vector of the TLS presentation language: a length, then that many bytes."""
        return _Reader(self.take(self.number(length_size)))

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _parse_client_hello(body: bytes) -> Detected:
    """RFC 8446 §4.1.2 field by field; only the extensions matter, the rest is skipped."""
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    if len(reader.vector(1).data) > 32:
        raise _Malformed("legacy_session_id longer than 32 bytes")
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    if reader.done:
        return Detected("tls")  # a TLS 1.2-or-older hello may have no extensions at all
    extensions = _extensions(reader.vector(2))
    if not reader.done:
        raise _Malformed("bytes after the extensions")
    sni = _server_name(extensions[_EXT_SERVER_NAME]) if _EXT_SERVER_NAME in extensions else None
    alpn = _alpn(extensions[_EXT_ALPN]) if _EXT_ALPN in extensions else ()
    return Detected("tls", sni, alpn)


def _extensions(reader: _Reader) -> dict[int, _Reader]:
    """Extension type -> its data. RFC 8446 §4.2 forbids two of one type; a hello with a
    duplicate is refused by servers, and which copy to believe would be a guess."""
    found: dict[int, _Reader] = {}
    while not reader.done:
        kind = reader.number(2)
        data = reader.vector(2)
        if kind in found:
            raise _Malformed(f"extension {kind} twice")
        found[kind] = data
    return found


def _server_name(reader: _Reader) -> str | None:
    """The host_name of a server_name extension (RFC 6066 §3), lowercased because DNS names
    compare without case; None when the list has no host_name."""
    names = reader.vector(2)
    if not reader.done or names.done:
        raise _Malformed("server_name extension with trailing bytes or an empty list")
    host = None
    while not names.done:
        name_type = names.number(1)
        name = names.vector(2).data
        if name_type == _HOST_NAME and host is None:
            host = _host_name(name)
    return host


def _host_name(name: bytes) -> str:
    """RFC 6066: ASCII, no trailing dot, not empty. Bytes outside printable ASCII are refused
    rather than decoded into a routing key that no configured name can equal."""
    if not name or not all(0x21 <= byte <= 0x7E for byte in name):
        raise _Malformed("host_name empty or not printable ASCII")
    return name.decode("ascii").lower()


def _alpn(reader: _Reader) -> tuple[str, ...]:
    """The ProtocolNameList of an ALPN extension (RFC 7301 §3.1), in the client's order."""
    protocols = reader.vector(2)
    if not reader.done or protocols.done:
        raise _Malformed("ALPN extension with trailing bytes or an empty list")
    names = []
    while not protocols.done:
        name = protocols.vector(1).data
        if not name:
            raise _Malformed("empty ALPN protocol name")
        names.append(name.decode("ascii", "backslashreplace"))
    return tuple(names)
