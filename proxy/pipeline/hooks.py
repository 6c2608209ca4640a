"""Where policy plugs into the pipeline: authorization, rate limits.

A hook sees each routed request before anything goes upstream and either lets it through
(None) or refuses it with a local reply (403 for a denied caller, 429 with Flag.RATE_LIMITED
for a rate limit), as Envoy's RBAC and local rate limit filters sit before its router. Hooks
run in order, the first refusal answers; they are synchronous decisions over the request
head and what the connection knows (its peer, later its peer's identity), so a request with
no hook configured pays for an empty loop and nothing else.
"""

from __future__ import annotations

from typing import Protocol

from proxy.pipeline.exchange import Exchange
from proxy.pipeline.local_reply import LocalReply


class PolicyHook(Protocol):
    def check(self, exchange: Exchange) -> LocalReply | None:
        """None: the request goes on; a reply: the request is answered with it, never
        forwarded."""
