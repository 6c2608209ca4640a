"""HTTP/2 heads to the router's HTTP/1.1 events and back."""

from __future__ import annotations

from proxy.http2.messages import (
    h1_request_headers,
    h2_request_headers,
    h2_response_headers,
    request_from_h2,
    response_from_h2,
    wants_trailers,
)


def test_an_h2_request_becomes_a_request_with_host_and_joined_cookies() -> None:
    request = request_from_h2(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"backend:8080"),
            (b":path", b"/a?b=1"),
            (b"cookie", b"a=1"),
            (b"x-one", b"1"),
            (b"cookie", b"b=2"),
        ]
    )
    assert request is not None
    assert (request.method, request.target, request.version) == (b"POST", b"/a?b=1", b"2")
    assert request.headers == [
        (b"host", b"backend:8080"),
        (b"x-one", b"1"),
        (b"cookie", b"a=1; b=2"),
    ]


def test_connect_is_not_forwarded() -> None:
    assert request_from_h2([(b":method", b"CONNECT"), (b":authority", b"x:443")]) is None


def test_forwarded_headers_become_an_h2_head_with_te_trailers_for_grpc() -> None:
    head = h2_request_headers(
        b"POST",
        b"/pkg.Svc/Call",
        [(b"host", b"svc:9000"), (b"content-type", b"application/grpc"), (b"connection", b"x")],
        te_trailers=True,
    )
    assert head == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"svc:9000"),
        (b":path", b"/pkg.Svc/Call"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ]
    assert wants_trailers([(b"te", b"Trailers")]) is True
    assert wants_trailers([(b"te", b"gzip")]) is False


def test_an_h1_upstream_gets_chunked_framing_for_a_body_of_unknown_length() -> None:
    assert h1_request_headers([(b"host", b"h")], has_body=True)[-1] == (
        b"transfer-encoding",
        b"chunked",
    )
    sized = [(b"host", b"h"), (b"content-length", b"3")]
    assert h1_request_headers(sized, has_body=True) == sized
    assert h1_request_headers([(b"host", b"h")], has_body=False) == [(b"host", b"h")]


def test_responses_both_ways() -> None:
    response = response_from_h2([(b":status", b"204"), (b"x-a", b"1")])
    assert (response.status, response.headers) == (204, [(b"x-a", b"1")])
    assert h2_response_headers(200, [(b"transfer-encoding", b"chunked"), (b"x-b", b"2")]) == [
        (b":status", b"200"),
        (b"x-b", b"2"),
    ]
