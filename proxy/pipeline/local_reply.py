"""Replies the sidecar makes itself, in Envoy's style: a status, a one-line body saying why, and
the response flag that the access log and metrics carry.

The bodies are Envoy's own texts where it has one, so operators searching for them find the
usual explanations; none contains bytes from the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.outcomes import Flag


@dataclass(frozen=True, slots=True)
class LocalReply:
    status: int
    flag: str  # Envoy's response flag, Flag.NONE when none applies
    body: bytes

    def headers(self) -> list[tuple[bytes, bytes]]:
        """A fresh list (the codec adapters may append ``connection: close``)."""
        return [
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", b"text/plain"),
            (b"server", b"detour"),
        ]


NO_ROUTE: Final = LocalReply(404, Flag.NO_ROUTE_FOUND, b"")
# Envoy's RBAC filter's words, which clients and tests of Istio meshes look for.
ACCESS_DENIED: Final = LocalReply(403, Flag.RBAC_ACCESS_DENIED, b"RBAC: access denied")
# A path the workload's path_normalization refuses (an escaped slash under REJECT_REQUEST).
PATH_REJECTED: Final = LocalReply(400, Flag.NONE, b"Bad Request")
# A request head not whole within the request headers timeout (slowloris): Envoy answers 408
# (details request_header_timeout) and sets no response flag.
REQUEST_HEADER_TIMEOUT: Final = LocalReply(408, Flag.NONE, b"request header timeout")
NO_HEALTHY_UPSTREAM: Final = LocalReply(503, Flag.NO_HEALTHY_UPSTREAM, b"no healthy upstream")
CONNECT_FAILURE: Final = LocalReply(
    503,
    Flag.UPSTREAM_CONNECTION_FAILURE,
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
)
UPSTREAM_RESET: Final = LocalReply(
    503,
    Flag.UPSTREAM_CONNECTION_TERMINATION,
    b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"connection termination",
)
OVERFLOW: Final = LocalReply(
    503,
    Flag.UPSTREAM_OVERFLOW,
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
)
TIMEOUT: Final = LocalReply(504, Flag.UPSTREAM_REQUEST_TIMEOUT, b"upstream request timeout")
BAD_UPSTREAM_RESPONSE: Final = LocalReply(
    502, Flag.UPSTREAM_PROTOCOL_ERROR, b"upstream sent a malformed response"
)


def fault_abort(status: int) -> LocalReply:
    return LocalReply(status, Flag.FAULT_INJECTED, b"fault filter abort")


def bad_request(status: int, reason: str) -> LocalReply:
    """A request the codec refused (400, 413, 414, 431, 501, 505); Envoy's flag is DPE."""
    return LocalReply(status, Flag.DOWNSTREAM_PROTOCOL_ERROR, reason.encode())
