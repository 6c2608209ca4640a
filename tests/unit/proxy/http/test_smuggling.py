"""Request smuggling defences (RFC 9112 §6.1, §6.3): every known-bad request is refused with the
right status and never becomes a Request event, so the proxy cannot forward it."""

from __future__ import annotations

import pytest

from proxy.http.codec import NEED_DATA, Connection, Request, State
from proxy.http.errors import RemoteProtocolError

H = b"Host: a\r\n"

# (id, raw request bytes, expected status hint)
BAD_REQUESTS = [
    (
        "cl-and-te",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-and-cl",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "cl-conflict",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        400,
    ),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\n", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\n", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", 400),
    ("cl-space-inside", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\n", 400),
    ("cl-empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", 400),
    (
        "cl-overflow",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n",
        400,
    ),
    (
        "cl-unicode-digit",
        b"POST / HTTP/1.1\r\n" + H + "Content-Length: \u0663\r\n\r\n".encode(),
        400,
    ),
    ("te-gzip-only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    (
        "te-chunked-not-last",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "te-unknown-then-chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    (
        "te-chunked-twice",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("te-xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    (
        "te-chunked-param",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;a=b\r\n\r\n",
        400,
    ),
    ("te-trailing-comma", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked,\r\n\r\n", 400),
    ("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-vertical-tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    (
        "obs-fold-tab",
        b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("space-after-start-line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    (
        "space-before-colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n",
        400,
    ),
    ("tab-before-colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length\t: 5\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare-lf-headers", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    ("non-token-name", b"GET / HTTP/1.1\r\n" + H + b"X(y): a\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"Xyz\r\n\r\n", 400),
    ("utf8-name", b"GET / HTTP/1.1\r\n" + H + "X\u00e9: a\r\n\r\n".encode(), 400),
    ("version-2", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("version-0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("version-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("version-lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("version-missing", b"GET /\r\n" + H + b"\r\n", 400),
    ("double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad-method", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative-target", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-not-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("connect-no-port", b"CONNECT example.com HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-userinfo", b"GET http://u@example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-bad-scheme", b"GET ftp://example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non-ascii-target", "GET /\u00e9 HTTP/1.1\r\n".encode() + H + b"\r\n", 400),
    ("fragment-target", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad-host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
]


def feed(raw: bytes) -> tuple[list[object], RemoteProtocolError | None, Connection]:
    conn = Connection("server")
    conn.receive_data(raw)
    events: list[object] = []
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
    except RemoteProtocolError as exc:
        return events, exc, conn
    return events, None, conn


@pytest.mark.parametrize(
    ("raw", "status"), [(r, s) for _, r, s in BAD_REQUESTS], ids=[i for i, _, _ in BAD_REQUESTS]
)
def test_bad_request_is_refused_before_any_request_event(raw: bytes, status: int) -> None:
    events, exc, conn = feed(raw)
    assert exc is not None, events
    assert exc.status_hint == status, exc.reason
    assert not any(isinstance(e, Request) for e in events)
    assert conn.their_state is State.ERROR
    assert not conn.keep_alive


@pytest.mark.parametrize(
    ("raw", "status"), [(r, s) for _, r, s in BAD_REQUESTS], ids=[i for i, _, _ in BAD_REQUESTS]
)
def test_bad_request_fed_byte_by_byte_is_refused_too(raw: bytes, status: int) -> None:
    conn = Connection("server")
    with pytest.raises(RemoteProtocolError) as info:
        for i in range(len(raw)):
            conn.receive_data(raw[i : i + 1])
            while (event := conn.next_event()) is not NEED_DATA:
                assert not isinstance(event, Request)
        conn.receive_data(b"")
        conn.next_event()
    assert info.value.status_hint == status


def test_table_is_large_enough() -> None:
    assert len(BAD_REQUESTS) >= 20


def test_error_state_is_sticky() -> None:
    _, exc, conn = feed(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")
    assert exc is not None
    with pytest.raises(RemoteProtocolError) as again:
        conn.next_event()
    assert again.value.status_hint == 400


def test_reason_never_echoes_peer_bytes() -> None:
    _, exc, _ = feed(b"GET / HTTP/1.1\r\n" + H + b"SECRET-\x01: 1\r\n\r\n")
    assert exc is not None and "SECRET" not in exc.reason


def test_identical_repeated_content_length_is_collapsed() -> None:
    events, exc, _ = feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    )
    assert exc is None
    request = events[0]
    assert isinstance(request, Request)
    assert request.content_length == 2
    assert [h for h in request.headers if h[0] == b"content-length"] == [(b"content-length", b"2")]


def test_transfer_encoding_is_case_insensitive_and_trimmed() -> None:
    events, exc, _ = feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n1\r\nx\r\n0\r\n\r\n"
    )
    assert exc is None
    assert isinstance(events[0], Request) and events[0].chunked


@pytest.mark.parametrize(
    ("chunked_body", "why"),
    [
        (b"5\nhello\r\n0\r\n\r\n", "bare LF after size"),
        (b"5\r\nhello\n0\r\n\r\n", "bare LF after data"),
        (b"5\r\nhelloX\r\n0\r\n\r\n", "data longer than size"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "negative"),
        (b"g\r\n", "non-hex"),
        (b" 5\r\nhello\r\n0\r\n\r\n", "leading space"),
        (b"\r\n", "empty size"),
        (b"1_0\r\n", "underscore int() would accept"),
        (b"8000000000000000\r\n", "2^63"),
        (b"fffffffffffffffff\r\n", "17 hex digits"),
        (b"5;" + b"a" * 5000 + b"\r\nhello\r\n", "extension too long"),
        (b"5;a\x00\r\nhello\r\n", "NUL in extension"),
        (b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", "framing field in trailers"),
        (b"5\r\nhello\r\n0\r\nX: y\n\n", "bare LF in trailers"),
        (b"5\r\nhello\r\n0\n", "bare LF after last chunk"),
    ],
)
def test_bad_chunked_bodies(chunked_body: bytes, why: str) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_body
    events, exc, _ = feed(raw)
    assert exc is not None, why
    assert exc.status_hint == 400, why
    assert isinstance(events[0], Request)  # the head was fine; the body is not forwarded whole


def test_chunk_extensions_are_bounded_per_message() -> None:
    body = b"".join(b"1;" + b"e" * 1000 + b"\r\nx\r\n" for _ in range(17)) + b"0\r\n\r\n"
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    _, exc, _ = feed(raw)
    assert exc is not None and exc.reason == "chunk extensions too long"


def test_small_chunk_extensions_are_ignored() -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5 ;name=value\r\nhello\r\n0\r\n\r\n"
    )
    events, exc, _ = feed(raw)
    assert exc is None
    assert [type(e).__name__ for e in events] == ["Request", "Data", "EndOfMessage"]
