"""Errors the HTTP/1.1 codec raises: one base class carrying the status to answer with.

Reasons are fixed phrases chosen by the codec and never contain bytes from the peer, so they are
safe in logs and as metric labels (the same rule as the DNS codec).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message could not be parsed or serialised; the connection is now in state ERROR.

    ``status_hint`` is the status a proxy should answer the downstream client with: 400, 413,
    414, 431, 501 or 505 for a bad request, 502 for a bad upstream response (Envoy's UPE flag),
    500 when the proxy itself tried to send something invalid.
    """

    def __init__(self, reason: str, status_hint: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status_hint={self.status_hint})"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not HTTP/1.1 this proxy is willing to forward."""


class LocalProtocolError(ProtocolError):
    """We (the proxy) tried to send an event that is invalid or not allowed in this state."""

    def __init__(self, reason: str, status_hint: int = 500) -> None:
        super().__init__(reason, status_hint)
