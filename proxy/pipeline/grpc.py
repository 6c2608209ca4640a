"""gRPC over the HTTP router, pure: what a request's deadline is, what its status was, which
statuses a retry policy names, and what our own replies to a gRPC client look like.

gRPC's wire rules (grpc/grpc doc/PROTOCOL-HTTP2.md): a call is an HTTP/2 POST whose
content-type starts with ``application/grpc``; the status travels in ``grpc-status`` /
``grpc-message`` trailers, or in the response head alone when the server sends no message
("Trailers-Only"); ``grpc-timeout`` is the client's deadline as 1 to 8 digits and a unit.
"""

from __future__ import annotations

from typing import Final

from proxy.http.events import Headers
from proxy.pipeline.local_reply import LocalReply

# Status codes (grpc/grpc doc/statuscodes.md) by their retry_on names (Envoy's
# x-envoy-retry-grpc-on): the statuses a retry may help with.
GRPC_RETRY_ON: Final[dict[str, int]] = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_RETRY_NAME_BY_CODE: Final = {code: name for name, code in GRPC_RETRY_ON.items()}

OK: Final = 0
DEADLINE_EXCEEDED: Final = 4
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNKNOWN: Final = 2

# grpc-timeout units (PROTOCOL-HTTP2.md: TimeoutUnit) in seconds.
_UNITS: Final = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_MAX_TIMEOUT_DIGITS: Final = 8


def is_grpc(headers: Headers) -> bool:
    """A gRPC call: content-type ``application/grpc`` or ``application/grpc+proto`` etc."""
    for name, value in headers:
        if name == b"content-type":
            return value == b"application/grpc" or value.startswith(
                (b"application/grpc+", b"application/grpc;")
            )
    return False


def parse_timeout(value: bytes | None) -> float | None:
    """A ``grpc-timeout`` value in seconds; None when absent or malformed (a malformed value
    is ignored, as Envoy does, rather than failing the call)."""
    if not value:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > _MAX_TIMEOUT_DIGITS or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]


def request_deadline(route_timeout: float | None, grpc_timeout: float | None) -> float | None:
    """The request's budget: the tighter of the route's timeout and the client's deadline."""
    if route_timeout is None:
        return grpc_timeout
    if grpc_timeout is None:
        return route_timeout
    return min(route_timeout, grpc_timeout)


def status_of(headers: Headers) -> int | None:
    """The ``grpc-status`` in a head or trailers, or None when there is none (or it is not a
    number)."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else None
    return None


def retry_outcome(status: int | None) -> str | None:
    """The retry_on name of a gRPC status (``unavailable``), or None when no policy names it."""
    if status is None:
        return None
    return _RETRY_NAME_BY_CODE.get(status)


def status_for_http(status: int) -> int:
    """The gRPC status for an HTTP status a gRPC client would otherwise see (the gRPC spec's
    http-grpc-status-mapping, as Envoy applies it to its own replies)."""
    if status == 400:
        return INTERNAL
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status == 403:
        return 7  # PERMISSION_DENIED
    if status == 404:
        return UNIMPLEMENTED
    if status in (429, 502, 503):
        return UNAVAILABLE
    if status == 504:
        return DEADLINE_EXCEEDED  # our 504s are timeouts: the client's deadline semantics
    return UNKNOWN


def local_reply_headers(reply: LocalReply) -> tuple[int, Headers]:
    """A Trailers-Only gRPC response for one of our local replies: HTTP 200 and the status in
    the head (what Envoy sends a gRPC client instead of a 503 or 504 page). Returns the gRPC
    status and the headers (the codec adds ``:status``)."""
    code = status_for_http(reply.status)
    message = percent_encode(reply.body)
    return code, [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(code).encode()),
        (b"grpc-message", message),
        (b"server", b"detour"),
    ]


def percent_encode(message: bytes) -> bytes:
    """grpc-message's encoding: printable ASCII but "%" as is, every other byte as %XX."""
    return b"".join(
        bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
        for byte in message
    )
