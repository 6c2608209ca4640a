"""Replies the sidecar makes itself, in Envoy's style: a status, a one-line body saying why, and
the response flag that the access log and metrics carry.

The bodies are Envoy's own texts where it has one, so operators searching for them find the
usual explanations; none contains bytes from the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Response


@dataclass(frozen=True, slots=True)
class LocalReply:
    status: int
    flag: str  # Envoy's response flag, "-" when none applies
    body: bytes

    def response(self, close: bool) -> tuple[Response, bytes]:
        headers = [
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", b"text/plain"),
            (b"server", b"detour"),
        ]
        if close:
            headers.append((b"connection", b"close"))
        return Response(self.status, headers), self.body


NO_ROUTE = LocalReply(404, "NR", b"")
NO_HEALTHY_UPSTREAM = LocalReply(503, "UH", b"no healthy upstream")
CONNECT_FAILURE = LocalReply(
    503,
    "UF",
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
)
UPSTREAM_RESET = LocalReply(
    503,
    "UC",
    b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"connection termination",
)
OVERFLOW = LocalReply(
    503, "UO", b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
)
TIMEOUT = LocalReply(504, "UT", b"upstream request timeout")
BAD_UPSTREAM_RESPONSE = LocalReply(502, "UPE", b"upstream sent a malformed response")
DRAINING = LocalReply(503, "-", b"the sidecar is shutting down")


def fault_abort(status: int) -> LocalReply:
    return LocalReply(status, "FI", b"fault filter abort")


def bad_request(status: int, reason: str) -> LocalReply:
    """A request the codec refused (400, 413, 414, 431, 501, 505); Envoy's flag is DPE."""
    return LocalReply(status, "DPE", reason.encode())
