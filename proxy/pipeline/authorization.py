"""Authorization on the inbound request path: the policy hook that asks ``proxy.policy``
whether this connection's caller may make this request, and answers 403
``RBAC: access denied`` when it may not (Envoy's RBAC filter, as Istio configures it on the
inbound side).

The request's path is already normalised (the pipeline does it before routing), so the path
the policy matched is the one the app receives. The policies are read from the worker at each
request, so a reload that revokes an ALLOW applies to the next request of a keep-alive
connection too, not only to new connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from proxy.pipeline import local_reply
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.local_reply import LocalReply
from proxy.policy.evaluate import Authorizer, HttpAttributes, Peer
from proxy.policy.paths import normal_host
from proxy.series import Stats
from proxy.stats import Counter, Labels

log = logging.getLogger("detour.proxy")

RBAC_ALLOWED = Counter("rbac_allowed", "Requests and connections an authorization policy let in")
RBAC_DENIED = Counter("rbac_denied", "Requests and connections an authorization policy refused")
HTTP_LABELS: Labels = (("protocol", "http"),)
TCP_LABELS: Labels = (("protocol", "tcp"),)


class AuthorizationHook:
    """One inbound HTTP connection's hook: its caller is fixed (``peer`` makes its attributes,
    once, when a policy first needs them), its requests vary."""

    __slots__ = ("_authorizer", "_make_peer", "_peer", "_stats")

    def __init__(
        self, authorizer: Callable[[], Authorizer], peer: Callable[[], Peer], stats: Stats
    ) -> None:
        self._authorizer = authorizer
        self._make_peer = peer
        self._peer: Peer | None = None
        self._stats = stats

    def check(self, exchange: Exchange) -> LocalReply | None:
        authorizer = self._authorizer()
        if not authorizer.active:
            return None
        peer = self._peer
        if peer is None:
            peer = self._peer = self._make_peer()
        request = exchange.request
        attributes = HttpAttributes(
            request.method.decode("latin-1"),
            _host(exchange.authority),
            request.target.partition(b"?")[0].decode("latin-1"),
            request.headers,
        )
        verdict = authorizer.check(peer, attributes)
        if verdict.allowed:
            self._stats.inc(RBAC_ALLOWED, HTTP_LABELS)
            return None
        self._stats.inc(RBAC_DENIED, HTTP_LABELS)
        log.debug("%s %s from %s: %s", attributes.method, attributes.path, peer, verdict.reason)
        return local_reply.ACCESS_DENIED


def connection_allowed(authorizer: Authorizer, peer: Peer, stats: Stats) -> bool:
    """A TCP connection's verdict, counted; a denial is logged (once per connection)."""
    verdict = authorizer.check(peer)
    if verdict.allowed:
        stats.inc(RBAC_ALLOWED, TCP_LABELS)
        return True
    stats.inc(RBAC_DENIED, TCP_LABELS)
    log.info("connection from %s to port %d closed: %s", peer.address, peer.port, verdict.reason)
    return False


def _host(authority: bytes | None) -> str | None:
    host = normal_host(authority)
    return host.decode("latin-1") if host is not None else None
