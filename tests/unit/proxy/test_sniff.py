"""Protocol sniffing: real ClientHellos from Python's ssl module, HTTP/1 and HTTP/2 openings,
server-first and random bytes, fed whole and byte by byte, plus malformed and fuzzed TLS."""

from __future__ import annotations

import dataclasses
import random
import ssl

import pytest

from proxy.filters.sniff import (
    DEFAULT_DETECT_TIMEOUT,
    DEFAULT_SKIP_PORTS,
    HTTP1_METHODS,
    HTTP2_PREFACE,
    MAX_CLIENT_HELLO_BYTES,
    Detected,
    detect,
)

TCP = Detected("tcp")
HTTP1 = Detected("http1")
HTTP2 = Detected("http2")
TLS_NO_SNI = Detected("tls")
MESH_NAME = "reviews.default.svc.cluster.local"


def fed_byte_by_byte(data: bytes, step: int = 1) -> Detected | None:
    """Every prefix answers None or the final answer, and once decided it stays decided.
    Returns the answer for the whole of ``data``."""
    final = detect(data)
    decided = None
    for end in [*range(1, len(data), step), len(data)]:
        answer = detect(data[:end])
        assert answer in (None, final), (end, answer, final)
        if decided is not None:
            assert answer == decided, end
        decided = answer or decided
    return final


def client_hello(
    server_hostname: str | None = MESH_NAME,
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The first flight of a real TLS client, as OpenSSL writes it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        context.check_hostname = False
    context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_message(hello: bytes) -> bytes:
    """The ClientHello handshake message inside a one-record first flight."""
    assert hello[0] == 0x16 and int.from_bytes(hello[3:5], "big") == len(hello) - 5
    return hello[5:]


def records(message: bytes, size: int, version: bytes = b"\x03\x01") -> bytes:
    """``message`` re-framed into handshake records of ``size`` bytes (RFC 8446 §5.1 allows a
    handshake message to span records)."""
    out = b""
    for start in range(0, len(message), size):
        chunk = message[start : start + size]
        out += b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk
    return out


def vector(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vector(data, 2)


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([kind]) + vector(name, 2) for kind, name in names)
    return extension(0, vector(entries, 2))


def alpn_extension(*protocols: bytes) -> bytes:
    return extension(16, vector(b"".join(vector(p, 1) for p in protocols), 2))


def made_hello(
    extensions: bytes | None = b"", session_id: bytes = b"\x11" * 32, trailing: bytes = b""
) -> bytes:
    """A hand-built ClientHello record, for the shapes a real client never sends."""
    body = b"\x03\x03" + b"\x22" * 32 + vector(session_id, 1)
    body += vector(b"\x13\x01\x13\x02", 2) + vector(b"\x00", 1)
    if extensions is not None:
        body += vector(extensions, 2)
    body += trailing
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, 2**14)


# --- constants ------------------------------------------------------------------------------


def test_defaults() -> None:
    assert sorted(DEFAULT_SKIP_PORTS) == [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]
    assert isinstance(DEFAULT_SKIP_PORTS, frozenset)
    assert DEFAULT_DETECT_TIMEOUT == 0.1
    assert MAX_CLIENT_HELLO_BYTES == 16 * 1024 + 5


def test_detected_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        HTTP1.protocol = "tcp"  # type: ignore[misc]
    assert Detected("tls", "a", ("h2",)) == Detected("tls", "a", ("h2",))


def test_no_bytes_yet() -> None:
    assert detect(b"") is None


# --- TLS: real ClientHellos -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_hostname", "alpn", "maximum", "expected"),
    [
        (MESH_NAME, ["h2", "http/1.1"], ssl.TLSVersion.TLSv1_3, (MESH_NAME, ("h2", "http/1.1"))),
        (MESH_NAME, None, ssl.TLSVersion.TLSv1_3, (MESH_NAME, ())),
        ("Example.COM", ["http/1.1"], ssl.TLSVersion.TLSv1_2, ("example.com", ("http/1.1",))),
        ("api.example.com", ["h2"], ssl.TLSVersion.TLSv1_2, ("api.example.com", ("h2",))),
        (None, ["h2"], ssl.TLSVersion.TLSv1_3, (None, ("h2",))),
        ("10.96.0.12", None, ssl.TLSVersion.TLSv1_3, (None, ())),  # no SNI for IP literals
    ],
)
def test_real_client_hello(server_hostname, alpn, maximum, expected) -> None:
    hello = client_hello(server_hostname, alpn, maximum)
    sni, protocols = expected
    assert fed_byte_by_byte(hello) == Detected("tls", sni, protocols)


def test_client_hello_waits_until_it_is_whole() -> None:
    hello = client_hello(alpn=["h2"])
    assert all(detect(hello[:end]) is None for end in range(1, len(hello)))
    assert detect(hello) == Detected("tls", MESH_NAME, ("h2",))


def test_bytes_after_the_client_hello_change_nothing() -> None:
    hello = client_hello(alpn=["h2"])
    expected = detect(hello)
    assert detect(hello + b"\x17\x03\x03\x00\x10" + b"x" * 16) == expected
    assert detect(hello + b"\x00" * 20000) == expected


@pytest.mark.parametrize("size", [1, 3, 64, 200])
def test_client_hello_spread_over_several_records(size: int) -> None:
    hello = client_hello(alpn=["h2", "http/1.1"])
    fragmented = records(handshake_message(hello), size)
    assert fed_byte_by_byte(fragmented, step=1 if size > 3 else 11) == Detected(
        "tls", MESH_NAME, ("h2", "http/1.1")
    )


def test_record_versions() -> None:
    message = handshake_message(client_hello())
    for version in (b"\x03\x00", b"\x03\x01", b"\x03\x03", b"\x03\x04"):
        assert detect(records(message, 2**14, version)).sni == MESH_NAME
    assert detect(records(message, 2**14, b"\x03\x05")) == TCP
    assert detect(records(message, 2**14, b"\x02\x00")) == TCP


def test_tls_is_decided_on_the_record_header_alone() -> None:
    assert detect(b"\x16") is None
    assert detect(b"\x16\x03") is None
    assert detect(b"\x16\x04") == TCP
    assert detect(b"\x16\x03\x01") is None  # TLS, waiting for the ClientHello's SNI


# --- TLS: the bound -------------------------------------------------------------------------


def test_hello_declared_longer_than_the_bound_is_tls_without_sni_at_once() -> None:
    hello = made_hello(sni_extension((0, MESH_NAME.encode())) + extension(21, b"\x00" * 17000))
    # record header + handshake type + 3-byte length: enough to know it will not fit
    assert detect(hello[:9]) == TLS_NO_SNI
    assert fed_byte_by_byte(hello[:2000]) == TLS_NO_SNI


def test_hello_that_overruns_the_bound_through_record_overhead() -> None:
    """Fits as a message, but split into 40-byte records its framing passes the bound:
    wait up to the bound, then TLS without SNI."""
    hello = made_hello(sni_extension((0, MESH_NAME.encode())) + extension(21, b"\x00" * 15500))
    fragmented = records(handshake_message(hello), 40)
    assert len(fragmented) > MAX_CLIENT_HELLO_BYTES
    assert detect(fragmented[: MAX_CLIENT_HELLO_BYTES - 1]) is None
    assert detect(fragmented[:MAX_CLIENT_HELLO_BYTES]) == TLS_NO_SNI
    assert fed_byte_by_byte(fragmented, step=997) == TLS_NO_SNI


def test_padded_hello_just_under_the_bound_is_read() -> None:
    hello = made_hello(sni_extension((0, b"big.example")) + extension(21, b"\x00" * 16000))
    assert len(hello) <= MAX_CLIENT_HELLO_BYTES
    assert fed_byte_by_byte(hello, step=331) == Detected("tls", "big.example")


# --- TLS: hand-made and malformed hellos ----------------------------------------------------


def test_made_hello_with_sni_and_alpn() -> None:
    hello = made_hello(sni_extension((0, b"a.example")) + alpn_extension(b"h2", b"http/1.1"))
    assert fed_byte_by_byte(hello) == Detected("tls", "a.example", ("h2", "http/1.1"))


def test_hello_without_extensions_is_tls_without_sni() -> None:
    assert fed_byte_by_byte(made_hello(None)) == TLS_NO_SNI
    assert fed_byte_by_byte(made_hello(b"")) == TLS_NO_SNI


def test_the_first_host_name_wins_and_other_name_types_are_skipped() -> None:
    names = sni_extension((7, b"other-type"), (0, b"first.example"), (0, b"second.example"))
    assert detect(made_hello(names)).sni == "first.example"
    assert detect(made_hello(sni_extension((7, b"other-type")))) == TLS_NO_SNI


@pytest.mark.parametrize(
    "hello",
    [
        made_hello(session_id=b"\x00" * 33),  # legacy_session_id<0..32>
        made_hello(sni_extension((0, b"a.example")), trailing=b"\x00"),
        made_hello(sni_extension((0, b"a.example")) * 2),  # duplicate extension
        made_hello(sni_extension((0, b""))),  # empty host_name
        made_hello(sni_extension((0, b"caf\xc3\xa9.example"))),  # not ASCII
        made_hello(sni_extension((0, b"a b.example"))),
        made_hello(extension(0, vector(b"", 2))),  # empty ServerNameList
        made_hello(extension(0, b"\x00\x09\x00\x00\x05a.example")),  # inner length too long
        made_hello(extension(0, vector(b"\x00\x00\x03abc", 2) + b"\x00")),  # trailing byte
        made_hello(alpn_extension(b"h2", b"")),  # empty ProtocolName
        made_hello(extension(16, vector(b"", 2))),  # empty ProtocolNameList
        made_hello(extension(16, b"\x00\x05\x02h2")),  # list longer than the extension
        made_hello(b"\x00\x00\x00\x10abc"),  # extension data shorter than its length
        made_hello(b"\x00"),  # half an extension type
    ],
    ids=lambda h: h[40:60].hex(),
)
def test_malformed_hello_is_tls_without_sni(hello: bytes) -> None:
    assert fed_byte_by_byte(hello) == TLS_NO_SNI


def test_malformed_records() -> None:
    message = handshake_message(client_hello())
    # not a ClientHello: a ServerHello (type 2) as a client's first message
    assert detect(records(b"\x02" + message[1:], 2**14)) == TLS_NO_SNI
    # a zero-length handshake record
    assert detect(b"\x16\x03\x01\x00\x00" + records(message, 2**14)) == TLS_NO_SNI
    # a record announcing more than 2^14 bytes
    assert detect(b"\x16\x03\x01\x40\x01" + message) == TLS_NO_SNI
    # the hello continued in an application-data record
    split = records(message[:100], 100) + b"\x17\x03\x03" + vector(message[100:], 2)
    assert detect(split) == TLS_NO_SNI
    # body shorter than legacy_version + random
    assert detect(records(b"\x01\x00\x00\x04\x03\x03\x00\x00", 100)) == TLS_NO_SNI


def mutate(hello: bytes, rng: random.Random) -> bytes:
    """One random damage: flipped bytes, a length field rewritten, a cut or an insertion."""
    data = bytearray(hello)
    choice = rng.randrange(4)
    if choice == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(5, len(data))] = rng.randrange(256)
    elif choice == 1:
        at = rng.randrange(5, len(data) - 2)
        data[at : at + 2] = rng.choice([b"\x00\x00", b"\xff\xff", rng.randbytes(2)])
    elif choice == 2:
        del data[rng.randrange(5, len(data)) :]
    else:
        at = rng.randrange(5, len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 40))
    return bytes(data)


def test_fuzzed_client_hellos_never_raise() -> None:
    rng = random.Random(20261126)
    seeds = [
        client_hello(alpn=["h2", "http/1.1"]),
        client_hello(None, ["h2"], ssl.TLSVersion.TLSv1_2),
        made_hello(sni_extension((0, b"a.example")) + alpn_extension(b"h2")),
    ]
    for _ in range(3000):
        data = mutate(rng.choice(seeds), rng)
        answer = detect(data)
        assert answer is None or answer.protocol == "tls"
        if answer is not None and answer.sni is not None:
            assert answer.sni.isascii() and answer.sni == answer.sni.lower()
    for _ in range(30):
        fed_byte_by_byte(mutate(rng.choice(seeds), rng), step=5)


# --- HTTP/2 ---------------------------------------------------------------------------------


def test_http2_preface() -> None:
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert fed_byte_by_byte(HTTP2_PREFACE + settings) == HTTP2
    assert all(detect(HTTP2_PREFACE[:end]) is None for end in range(1, len(HTTP2_PREFACE)))
    assert detect(HTTP2_PREFACE) == HTTP2


def test_an_almost_preface_is_tcp_where_it_goes_wrong() -> None:
    assert detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n") is None
    assert detect(b"PRI * HTTP/1.1") == TCP
    assert detect(b"PRI * HTTP/") is None
    assert detect(b"PRI * HTTP/1") == TCP
    assert detect(b"PRO") == TCP


# --- HTTP/1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [m.decode() for m in HTTP1_METHODS])
def test_http1_request_line(method: str) -> None:
    request = f"{method} /reviews/1 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n".encode()
    assert fed_byte_by_byte(request) == HTTP1
    assert detect(f"{method} ".encode()) == HTTP1  # decided on the method and one space
    assert detect(method.encode()) is None


def test_http1_methods() -> None:
    assert {m.decode() for m in HTTP1_METHODS} == {
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    }  # fmt: skip


def test_connect_and_absolute_forms() -> None:
    assert detect(b"CONNECT reviews:443 HTTP/1.1\r\n") == HTTP1
    assert detect(b"GET http://reviews/ HTTP/1.0\r\n") == HTTP1


@pytest.mark.parametrize(
    "data",
    [b"GETX / HTTP/1.1", b"get / HTTP/1.1", b"GET\t/", b"PROPFIND / HTTP/1.1", b"POSTS ", b"G "],
)
def test_not_quite_http1_is_tcp(data: bytes) -> None:
    assert fed_byte_by_byte(data) == TCP


def test_method_prefixes_wait() -> None:
    for data in (b"G", b"GE", b"GET", b"P", b"PA", b"PU", b"PR", b"D", b"O", b"T", b"H", b"C"):
        assert detect(data) is None, data


# --- opaque TCP -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # Redis (a client-first one)
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"\x4a\x00\x00\x00\x0a8.0.36\x00",  # a MySQL server greeting, were it sent first
        b"220 mail.example ESMTP\r\n",  # an SMTP banner
        b"\x05\x01\x00",  # SOCKS5
        b"\x00",
        b"\xff" * 10,
    ],
)
def test_other_protocols_are_tcp_from_the_first_byte(data: bytes) -> None:
    assert detect(data[:1]) == TCP
    assert fed_byte_by_byte(data) == TCP


def test_random_bytes() -> None:
    rng = random.Random(1337)
    starts = {b"\x16"[0], *(m[0] for m in HTTP1_METHODS), HTTP2_PREFACE[0]}
    for _ in range(2000):
        data = rng.randbytes(rng.randint(1, 64))
        answer = detect(data)
        if data[0] not in starts:
            assert answer == TCP
        else:
            assert answer is None or answer.protocol in ("tls", "tcp", "http1", "http2")
    for _ in range(50):
        fed_byte_by_byte(rng.randbytes(rng.randint(1, 300)))
