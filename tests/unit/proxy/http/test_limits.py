"""Limits: each default, what it answers, and that Limits configures it."""

from __future__ import annotations

import pytest

from proxy.http.codec import NEED_DATA, Connection, Limits, Request
from proxy.http.errors import RemoteProtocolError


def parse(raw: bytes, limits: Limits = Limits(), role: str = "server") -> object:  # noqa: B008
    conn = Connection(role, limits)  # type: ignore[arg-type]
    conn.receive_data(raw)
    return conn.next_event()


def status_of(raw: bytes, limits: Limits = Limits()) -> int:  # noqa: B008
    with pytest.raises(RemoteProtocolError) as info:
        parse(raw, limits)
    return info.value.status_hint


def test_defaults_are_envoys() -> None:
    limits = Limits()
    assert limits.max_head_bytes == 60 * 1024
    assert limits.max_headers == 100
    assert limits.max_request_line == 8 * 1024


def test_long_target_is_414_complete_or_not() -> None:
    target = b"/" + b"a" * 8300
    assert status_of(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") == 414
    assert status_of(b"GET " + target) == 414  # no line end yet: refused early


def test_target_at_the_limit_is_accepted() -> None:
    target = b"/" + b"a" * (8 * 1024 - len(b"GET  HTTP/1.1") - 1)
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == 8 * 1024
    assert isinstance(parse(line + b"\r\nHost: a\r\n\r\n"), Request)


def test_header_count() -> None:
    ok = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 99 + b"\r\n"
    assert isinstance(parse(ok), Request)
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n") == 431


def test_header_section_size() -> None:
    big = b"X: " + b"v" * 4000 + b"\r\n"
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + big * 16 + b"\r\n"
    assert len(raw) > 60 * 1024
    assert status_of(raw) == 431
    assert status_of(raw[:-2]) == 431  # never terminated: refused once over the limit


def test_limits_are_configurable() -> None:
    small = Limits(max_request_line=64, max_head_bytes=256, max_headers=3)
    assert status_of(b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: a\r\n\r\n", small) == 414
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 3 + b"\r\n", small) == 431
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 250 + b"\r\n\r\n", small) == 431
    assert isinstance(parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n", small), Request)


def test_chunk_line_limit_is_configurable() -> None:
    conn = Connection("server", Limits(max_chunk_line=10))
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.next_event()
    conn.receive_data(b"1;aaaaaaaaaaaaaa")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status_hint == 400


def test_trailer_limits() -> None:
    conn = Connection("server", Limits(max_headers=2))
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"T: v\r\n" * 3
        + b"\r\n"
    )
    conn.next_event()
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status_hint == 431


def test_response_over_limits_is_502() -> None:
    from proxy.http.codec import EndOfMessage

    conn = Connection("client")
    conn.send(Request(b"GET", b"/", [(b"host", b"a")]))
    conn.send(EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 70000)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status_hint == 502


def test_partial_head_within_limits_waits() -> None:
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 1000) is NEED_DATA
