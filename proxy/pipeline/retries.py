"""The retry loop of one request: tries until one is forwarded or the policy gives up, with
Envoy's back-off, the retry budget, the ``max_requests`` breaker and the retry counters.

Which tries are worth repeating is decided by the pure functions of ``proxy.pipeline.router``;
how a try is made is the caller's ``one_try``, which either forwards a response or raises
``TryFailed`` before anything was forwarded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final

from proxy.config.model import RetryPolicy
from proxy.outcomes import Flag
from proxy.pipeline import local_reply
from proxy.pipeline.errors import TryFailed
from proxy.pipeline.exchange import Exchange, RequestBody
from proxy.pipeline.local_reply import LocalReply
from proxy.pipeline.router import backoff_delay, is_retriable, retry_budget_allows
from proxy.series import Stats
from proxy.stats import Counter, Labels, cluster_labels
from proxy.upstream.cluster import ClusterRuntime
from proxy.upstream.hosts import Host

UPSTREAM_RQ_RETRY: Final = Counter("upstream_rq_retry", "Retries sent upstream")
UPSTREAM_RQ_RETRY_SUCCESS: Final = Counter(
    "upstream_rq_retry_success", "Retries that got a response that was not retried again"
)
UPSTREAM_RQ_RETRY_OVERFLOW: Final = Counter(
    "upstream_rq_retry_overflow", "Retries not sent because the retry budget was exhausted"
)
UPSTREAM_RQ_PENDING_OVERFLOW: Final = Counter(
    "upstream_rq_pending_overflow", "Requests refused because the pending queue was full"
)


class RetryState:
    """The policy applied to one request's tries: ``may_retry(outcome)`` says whether a try
    that ended so may be followed by another (the try asks before dropping a response it could
    still forward). One object per request rather than a closure per try.

    The retry it grants holds one of the cluster's ``retries_active`` from that decision until
    the next one (or the request's end), as Envoy's retry resource does: so a request's own
    finished retry never counts against its next, and two requests deciding at once cannot
    both pass a budget that has room for one."""

    __slots__ = (
        "_body",
        "_cluster",
        "_exchange",
        "_labels",
        "_policy",
        "_stats",
        "holding",
        "last_try",
        "refused",
    )

    def __init__(
        self,
        exchange: Exchange,
        policy: RetryPolicy,
        cluster: ClusterRuntime,
        body: RequestBody,
        stats: Stats,
        labels: Labels,
    ) -> None:
        self._exchange = exchange
        self._policy = policy
        self._cluster = cluster
        self._body = body
        self._stats = stats
        self._labels = labels
        self.last_try = policy.attempts == 0
        self.holding = False  # a retry slot of the cluster's is ours
        self.refused = False  # a retriable outcome was answered as it was (limit, budget)

    def may_retry(self, outcome: int | str) -> bool:
        """Ask once per try's end: a yes takes a retry slot (released at the next ask)."""
        if not self._body.replayable or not is_retriable(self._policy, outcome):
            return False
        self.release()
        self.refused = True
        if self.last_try:
            flags = self._exchange.flags
            if self._exchange.retries and Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED not in flags:
                flags.append(Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
            return False
        cluster = self._cluster
        breaker = cluster.service.policy.circuit_breaker
        if not retry_budget_allows(
            cluster.requests_active,
            cluster.retries_active,
            breaker.retry_budget_percent,
            breaker.min_retry_concurrency,
        ):
            self._stats.inc(UPSTREAM_RQ_RETRY_OVERFLOW, self._labels)
            return False
        self.refused = False
        self.holding = True
        cluster.retries_active += 1
        return True

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self._cluster.retries_active -= 1


OneTry = Callable[[set[Host], RetryState], Awaitable[None]]


async def forward_with_retries(
    exchange: Exchange,
    policy: RetryPolicy,
    cluster: ClusterRuntime,
    body: RequestBody,
    stats: Stats,
    rng: random.Random,
    one_try: OneTry,
) -> LocalReply | None:
    """Tries until one is forwarded or the policy gives up; returns the local reply to send
    when nothing was forwarded. ``one_try(tried_hosts, state)`` makes one try; it asks
    ``state.may_retry(outcome)`` about a response it could still drop (and then raises
    TryFailed with ``retry_approved``)."""
    breaker = cluster.service.policy.circuit_breaker
    labels = cluster_labels(cluster.name)
    if cluster.requests_active >= breaker.max_requests:
        stats.inc(UPSTREAM_RQ_PENDING_OVERFLOW, labels)
        return local_reply.OVERFLOW
    cluster.requests_active += 1
    state = RetryState(exchange, policy, cluster, body, stats, labels)
    tried: set[Host] = set()
    try:
        for attempt in range(policy.attempts + 1):
            if attempt:
                exchange.retries += 1
                stats.inc(UPSTREAM_RQ_RETRY, labels)
                await asyncio.sleep(backoff_delay(policy, attempt, rng.random()))
                state.last_try = attempt == policy.attempts
            try:
                await one_try(tried, state)
            except TryFailed as failure:
                if not (failure.retry_approved or state.may_retry(failure.outcome)):
                    return failure.reply
                continue
            # Envoy's retry success: the answer forwarded was one no retry was wanted for.
            if exchange.retries and not state.refused:
                stats.inc(UPSTREAM_RQ_RETRY_SUCCESS, labels)
            return None
        raise AssertionError("not reached: the last try returns or raises")
    finally:
        cluster.requests_active -= 1
        if state.holding:
            state.release()
