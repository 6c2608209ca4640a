"""Between HTTP/2 header lists and the HTTP/1.1 events the router works on, pure.

The router, the header rules and the access log speak the HTTP/1.1 codec's ``Request`` and
``Response``; an HTTP/2 stream's head is turned into one (``:authority`` becomes ``host``, the
cookie crumbs are joined again, RFC 9113 §8.2.3) and back (``host`` becomes ``:authority``;
connection-specific fields, which HTTP/2 forbids (§8.2.2), are already gone after the
router's hop-by-hop stripping). ``te: trailers`` is the one TE value HTTP/2 allows and gRPC
requires, so it is put back for an HTTP/2 upstream when the client sent it.
"""

from __future__ import annotations

from proxy.http.events import Headers, Request, Response

HTTP2_VERSION = b"2"  # Request.version of a request that came over HTTP/2


def request_from_h2(headers: Headers) -> Request | None:
    """The request of an HTTP/2 head, or None when it is not one we forward (CONNECT, which
    has no ``:path``; h2 has already refused heads that break RFC 9113 §8.3)."""
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            regular.append((name, value))
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if method is None or path is None or method == b"CONNECT":
        return None
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    authority = pseudo.get(b":authority")
    if authority is not None:
        regular = [(b"host", authority), *(h for h in regular if h[0] != b"host")]
    return Request(method, path, regular, version=HTTP2_VERSION)


def wants_trailers(headers: Headers) -> bool:
    """The client said ``te: trailers`` (every gRPC client does)."""
    return any(name == b"te" and value.strip().lower() == b"trailers" for name, value in headers)


def h2_request_headers(
    method: bytes, path: bytes, headers: Headers, te_trailers: bool, scheme: bytes = b"http"
) -> Headers:
    """An HTTP/2 request head from forwarded HTTP/1-style headers (hop-by-hop ones removed)."""
    authority = b""
    regular: Headers = []
    for name, value in headers:
        if name == b"host":
            authority = value
        elif name not in _H1_FRAMING:
            regular.append((name, value))
    head = [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", path),
    ]
    if te_trailers:
        head.append((b"te", b"trailers"))
    return head + regular


def h1_request_headers(headers: Headers, has_body: bool) -> Headers:
    """An HTTP/1.1 request head for an HTTP/2 request: a body of unknown length is chunked."""
    if has_body and not any(name == b"content-length" for name, _ in headers):
        return [*headers, (b"transfer-encoding", b"chunked")]
    return headers


def response_from_h2(headers: Headers) -> Response:
    status = 0
    regular: Headers = []
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            regular.append((name, value))
    return Response(status, regular, version=HTTP2_VERSION)


def h2_response_headers(status: int, headers: Headers) -> Headers:
    return [(b":status", str(status).encode()), *(h for h in headers if h[0] not in _H1_FRAMING)]


# Framing of the other hop: HTTP/2 frames its own bodies (RFC 9113 §8.2.2).
_H1_FRAMING = frozenset({b"transfer-encoding", b"connection", b"keep-alive", b"upgrade"})
