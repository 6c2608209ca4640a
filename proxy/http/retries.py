"""The retry loop of one request, shared by the HTTP/1.1 manager and the HTTP/2 stream handler:
tries until one is forwarded or the policy gives up, with Envoy's back-off, the retry budget,
the ``max_requests`` breaker and the retry counters.

Which tries are worth repeating is decided by the pure functions of ``proxy.http.router``;
how a try is made (HTTP/1.1 or HTTP/2, which downstream) is the caller's ``one_try``, which
either forwards a response or raises ``TryFailed`` before anything was forwarded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from proxy.config.model import RetryPolicy
from proxy.stats import Stats, cluster_labels

from . import local_reply
from .local_reply import LocalReply
from .router import backoff_delay, is_retriable, retry_budget_allows

MayRetry = Callable[[int | str], bool]


class TryFailed(Exception):
    """A try ended without forwarding anything; ``outcome`` is what the retry policy sees."""

    def __init__(self, outcome: int | str, reply: LocalReply, retry_approved: bool = False) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.reply = reply
        self.retry_approved = retry_approved  # the policy and the budget already said yes


async def forward_with_retries(
    exchange,
    policy: RetryPolicy,
    cluster,
    body,
    stats: Stats,
    rng: random.Random,
    one_try: Callable[[set, MayRetry], Awaitable[None]],
) -> LocalReply | None:
    """Tries until one is forwarded or the policy gives up; returns the local reply to send
    when nothing was forwarded. ``one_try(tried_hosts, may_retry)`` makes one try; it asks
    ``may_retry(outcome)`` about a response it could still drop (and then raises TryFailed
    with ``retry_approved``)."""
    breaker = cluster.service.policy.circuit_breaker
    name = cluster_labels(cluster.name)
    if cluster.requests_active >= breaker.max_requests:
        stats.inc("upstream_rq_pending_overflow", name)
        return local_reply.OVERFLOW
    cluster.requests_active += 1
    tried: set = set()
    retrying = False
    try:
        for attempt in range(policy.attempts + 1):
            if attempt:
                exchange.retries += 1
                stats.inc("upstream_rq_retry", name)
                await asyncio.sleep(backoff_delay(policy, attempt, rng.random()))
            last_try = attempt == policy.attempts

            def may_retry(outcome: int | str, last_try: bool = last_try) -> bool:
                if not body.replayable or not is_retriable(policy, outcome):
                    return False
                if last_try:
                    if exchange.retries:
                        exchange.flags.append("URX")  # Envoy: retry limit exceeded
                    return False
                if not retry_budget_allows(
                    cluster.requests_active,
                    cluster.retries_active,
                    breaker.retry_budget_percent,
                    breaker.min_retry_concurrency,
                ):
                    stats.inc("upstream_rq_retry_overflow", name)
                    return False
                return True

            try:
                await one_try(tried, may_retry)
            except TryFailed as failure:
                if not (failure.retry_approved or may_retry(failure.outcome)):
                    return failure.reply
                if not retrying:
                    retrying = True
                    cluster.retries_active += 1
                continue
            if exchange.retries:
                stats.inc("upstream_rq_retry_success", name)
            return None
        return local_reply.NO_HEALTHY_UPSTREAM  # not reached: the last try always returns
    finally:
        cluster.requests_active -= 1
        if retrying:
            cluster.retries_active -= 1
