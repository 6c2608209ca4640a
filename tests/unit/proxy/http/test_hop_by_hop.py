"""strip_hop_by_hop (RFC 9110 §7.6.1)."""

from __future__ import annotations

from proxy.http.codec import strip_hop_by_hop


def test_strips_the_fixed_set_and_what_connection_names() -> None:
    headers = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, X-Custom, Upgrade"),
        (b"Connection", b"x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"trailer", b"x-sum"),
        (b"proxy-authenticate", b"Basic"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"x-custom", b"1"),
        (b"X-Other", b"2"),
        (b"content-length", b"3"),
        (b"x-kept", b"4"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"host", b"a"),
        (b"content-length", b"3"),
        (b"x-kept", b"4"),
    ]


def test_nothing_to_strip_returns_equal_list() -> None:
    headers = [(b"host", b"a"), (b"accept", b"*/*")]
    assert strip_hop_by_hop(headers) == headers
