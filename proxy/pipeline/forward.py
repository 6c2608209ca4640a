"""The request pipeline: route → policy hooks → fault injection → cluster → tries → response.

Envoy's router filter, once for every codec: a ``Pipeline`` serves the requests of one
downstream connection to one service port (concurrently, for HTTP/2), each through
``forward``. The decisions are pure functions (``router``: route, destination, retry, back-off,
budget; ``rewrite``: headers; ``local_reply``, ``grpc``); this module is the control flow
between them, and every wait in it has a deadline:

* a request's whole life: the route ``timeout`` when set, tightened by a gRPC client's
  ``grpc-timeout`` (504 UT before the response head, the response cut short after it);
* each try until the response head: the retry policy's ``per_try_timeout`` when set;
* an upstream connect: the cluster's ``connect_timeout`` (the connector's);
* without a route timeout, the session's idle check ends a connection on which nothing moved
  for the service's ``idle_timeout``.

A request is never retried once its body outgrew what is kept for a replay, nor once any of
the response was forwarded. A client that leaves cancels its request's task (the adapters do
that): every try in flight is reset on the way out (``_try``'s ``finally``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Final, Protocol

from proxy.config.model import HttpRoute, Service, ServicePort
from proxy.http.events import Headers, InformationalResponse, Request, Response
from proxy.outcomes import Flag, Outcome
from proxy.pipeline import grpc, local_reply
from proxy.pipeline.errors import TryFailed, UpstreamCut
from proxy.pipeline.exchange import (
    PENDING,
    Exchange,
    Pending,
    RequestBody,
    ResponseSink,
    UpstreamTry,
)
from proxy.pipeline.hooks import PolicyHook
from proxy.pipeline.local_reply import LocalReply
from proxy.pipeline.respond import relay, send_local_reply
from proxy.pipeline.retries import RetryState, forward_with_retries
from proxy.pipeline.rewrite import (
    ATTEMPT_COUNT,
    forward_request_headers,
    new_request_id,
)
from proxy.pipeline.router import (
    HttpRouter,
    RouteEntry,
    header_value,
    pick_destination,
    roll_fault,
)
from proxy.policy.paths import EscapedSlashes, PathRejected, normal_target
from proxy.series import Stats
from proxy.stats import Counter, cluster_labels
from proxy.upstream.cluster import UPSTREAM_CX_NONE_HEALTHY, ClusterKey, ClusterRuntime
from proxy.upstream.hosts import Host

UPSTREAM_RQ_TOTAL: Final = Counter("upstream_rq_total", "Requests sent upstream, retries included")
UPSTREAM_RQ_TIMEOUT: Final = Counter(
    "upstream_rq_timeout", "Requests that hit their overall timeout"
)
UPSTREAM_RQ_PER_TRY_TIMEOUT: Final = Counter(
    "upstream_rq_per_try_timeout", "Upstream attempts that hit their per-try timeout"
)

_ATTEMPT_NUMBERS: Final = tuple(str(n).encode() for n in range(1, 11))


class Upstreams(Protocol):
    """What the pipeline takes from its worker: the current clusters (a reload swaps them;
    a request reads them once, when it picks its cluster), the stats and the randomness."""

    stats: Stats
    clusters: Mapping[ClusterKey, ClusterRuntime]
    rng: random.Random


NewTry = Callable[[ClusterRuntime, Host], UpstreamTry]


class Pipeline:
    """The requests of one downstream connection to one service port.

    Its methods are one request's control flow in order (route, deadline, tries) over the
    connection's context; the response side is ``respond``, the retry loop ``retries``."""

    __slots__ = (
        "_clock",
        "_cluster_keys",
        "_count_attempts",
        "_escaped_slashes",
        "_fixed_cluster",
        "_hash_key",
        "_hooks",
        "_new_try",
        "_peer",
        "_router",
        "_service",
        "_upstreams",
        "port",
    )

    def __init__(
        self,
        upstreams: Upstreams,
        service: Service,
        port: ServicePort,
        router: HttpRouter,
        peer: str,
        new_try: NewTry,
        fixed_cluster: ClusterRuntime | None = None,
        hooks: Sequence[PolicyHook] = (),
        clock: Callable[[], float] = time.time,
        count_attempts: bool = True,
        escaped_slashes: EscapedSlashes | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._service = service
        self.port = port
        self._router = router
        self._peer = peer  # the client's address: x-forwarded-for, and the ring-hash key
        self._hash_key = peer.encode()
        self._new_try = new_try
        self._fixed_cluster = fixed_cluster  # inbound: the local app, whatever the route says
        # A route destination's subset -> its cluster's key, made once per connection.
        self._cluster_keys: dict[str | None, ClusterKey] = {}
        self._hooks = tuple(hooks)
        self._clock = clock
        # Outbound: each try says its number (x-envoy-attempt-count); inbound passes the
        # caller's sidecar's count through, as Istio configures Envoy's inbound routes.
        self._count_attempts = count_attempts
        # Inbound: paths are normalised before routing and policy, and the app receives the
        # normalised one (proxy.policy.paths); None (outbound): forwarded as they came.
        self._escaped_slashes = escaped_slashes

    def new_exchange(self, request: Request, authority: bytes | None) -> Exchange:
        exchange = Exchange(request, self._clock(), authority)
        exchange.request_id = header_value(request.headers, b"x-request-id")
        return exchange

    def finish(self, exchange: Exchange) -> None:
        exchange.duration = self._clock() - exchange.started

    def _cluster_key(self, subset: str | None) -> ClusterKey:
        key = self._cluster_keys[subset] = (self._service.key, self.port.port, subset or "")
        return key

    # --- one request ----------------------------------------------------------------------

    async def forward(self, exchange: Exchange, body: RequestBody, sink: ResponseSink) -> None:
        """Answer ``exchange``'s request, forwarded or with a local reply. Raises
        ``DownstreamGone`` when the client goes; a response cut short is ``sink.cut``."""
        request = exchange.request
        if self._escaped_slashes is not None:
            try:
                request.target = normal_target(request.target, self._escaped_slashes)
            except PathRejected:
                await send_local_reply(exchange, local_reply.PATH_REJECTED, body, sink)
                return
        entry = self._router.match(
            request.method, request.target, exchange.authority, request.headers
        )
        if entry is None:
            await send_local_reply(exchange, local_reply.NO_ROUTE, body, sink)
            return
        exchange.route = route = entry.route
        for hook in self._hooks:
            refusal = hook.check(exchange)
            if refusal is not None:
                await send_local_reply(exchange, refusal, body, sink)
                return
        upstreams = self._upstreams
        rng = upstreams.rng
        delay, abort = roll_fault(route.fault, rng.random)
        if delay:
            exchange.flags.append(Flag.DELAY_INJECTED)
            await asyncio.sleep(delay)
        if abort is not None:
            await send_local_reply(exchange, local_reply.fault_abort(abort), body, sink)
            return
        destination = pick_destination(route.destinations, rng.random() * 100)
        key = self._cluster_keys.get(destination.subset) or self._cluster_key(destination.subset)
        cluster = self._fixed_cluster or upstreams.clusters[key]
        exchange.cluster = cluster
        reply = await self._forward_within_deadline(exchange, entry, cluster, body, sink)
        if reply is not None:  # the router's own answer: the route's response rules apply
            await send_local_reply(exchange, reply, body, sink, route.response_headers)

    async def _forward_within_deadline(
        self,
        exchange: Exchange,
        entry: RouteEntry,
        cluster: ClusterRuntime,
        body: RequestBody,
        sink: ResponseSink,
    ) -> LocalReply | None:
        """Tries until one is forwarded or the policy gives up, within the request's deadline;
        returns the local reply to send when nothing was forwarded."""
        route = entry.route
        deadline = route.timeout
        if exchange.request_protocol == "grpc":
            client = grpc.parse_timeout(header_value(exchange.request.headers, b"grpc-timeout"))
            deadline = grpc.request_deadline(route.timeout, client)
        forwarded = self._forwarded_request(exchange, route)

        def one_try(tried: set[Host], retry: RetryState) -> Coroutine[object, object, None]:
            return self._try(exchange, forwarded, cluster, tried, body, sink, entry, retry)

        upstreams = self._upstreams
        tries = forward_with_retries(
            exchange, route.retries, cluster, body, upstreams.stats, upstreams.rng, one_try
        )
        if deadline is None:  # no timer at all (an asyncio.Timeout costs per request)
            return await tries
        try:
            async with asyncio.timeout(deadline):
                return await tries
        except TimeoutError:
            upstreams.stats.inc(UPSTREAM_RQ_TIMEOUT, cluster_labels(cluster.name))
            if not exchange.head_sent:
                return local_reply.TIMEOUT
            exchange.flags.append(Flag.UPSTREAM_REQUEST_TIMEOUT)  # too late for a 504
            sink.cut(Flag.UPSTREAM_REQUEST_TIMEOUT)
            return None

    def _forwarded_request(self, exchange: Exchange, route: HttpRoute) -> Request:
        """The request as every try sends it (the last field the try's number, when
        counted)."""
        request = exchange.request

        def request_id() -> bytes:
            if exchange.request_id is None:
                exchange.request_id = new_request_id()
            return exchange.request_id

        headers = forward_request_headers(
            request, self._peer, route.request_headers, request_id, self._count_attempts
        )
        # The codecs frame what they send from the headers (rewrite re-added chunked framing
        # and the upgrade), and each speaks its own version: only these three matter.
        return Request(request.method, request.target, headers)

    async def _try(
        self,
        exchange: Exchange,
        forwarded: Request,
        cluster: ClusterRuntime,
        tried: set[Host],
        body: RequestBody,
        sink: ResponseSink,
        entry: RouteEntry,
        retry: RetryState,
    ) -> None:
        """One try on one host: forwards the response, or raises TryFailed."""
        stats = self._upstreams.stats
        host = cluster.pick(self._hash_key, avoid=tried)
        if host is None:
            stats.inc(UPSTREAM_CX_NONE_HEALTHY, cluster_labels(cluster.name))
            raise TryFailed(Outcome.NO_HEALTHY_UPSTREAM, local_reply.NO_HEALTHY_UPSTREAM)
        tried.add(host)
        exchange.tries += 1
        if exchange.tries > 1 and self._count_attempts:
            _set_attempt_count(forwarded.headers, exchange.tries)
        exchange.upstream_host = (host.address, host.port)
        stats.inc(UPSTREAM_RQ_TOTAL, cluster_labels(cluster.name))
        host.active_requests += 1
        attempt = self._new_try(cluster, host)
        per_try_timeout = entry.route.retries.per_try_timeout
        done = False
        try:
            try:
                if per_try_timeout is None:
                    response = await attempt.start(exchange, forwarded, body)
                else:
                    async with asyncio.timeout(per_try_timeout):
                        response = await attempt.start(exchange, forwarded, body)
            except TimeoutError:
                stats.inc(UPSTREAM_RQ_PER_TRY_TIMEOUT, cluster_labels(cluster.name))
                cluster.report_local_failure(host)
                raise TryFailed(Outcome.PER_TRY_TIMEOUT, local_reply.TIMEOUT) from None
            except TryFailed as failed:
                if failed.outcome == Outcome.RESET:  # a connect failure was reported already
                    cluster.report_local_failure(host)
                raise
            if type(response) is InformationalResponse:  # 101: the upstream took the upgrade
                exchange.status, exchange.head_sent = 101, True
                done = True
                await sink.tunnel(attempt.switch_protocols(), response)
                return
            assert type(response) is Response
            # The body's first part: None when the response ended with its head (its trailers,
            # if any, came with it), PENDING when it has not arrived yet.
            first: bytes | Pending | None = None if attempt.end else PENDING
            grpc_call = exchange.request_protocol == "grpc"
            if not attempt.end:
                try:
                    first = attempt.poll()  # a small response's body came with its head
                    if grpc_call and entry.retries_on_grpc_status and isinstance(first, Pending):
                        # A status in trailers right after the head decides a retry too; the
                        # wait for it is the route's, not the try's (a message takes time).
                        first = await attempt.read()
                except UpstreamCut:  # gone before anything was forwarded: a reset
                    cluster.report_local_failure(host)
                    raise TryFailed(Outcome.RESET, local_reply.UPSTREAM_RESET) from None
            grpc_status: int | None = None
            outcome: str | None = None
            if grpc_call:
                grpc_status = grpc.status_of(response.headers)
                if grpc_status is None and first is None:
                    grpc_status = grpc.status_of(attempt.trailers)
                outcome = grpc.retry_outcome(grpc_status)
            status = response.status
            cluster.report_response(host, status)
            # One decision per response (Envoy's wouldRetryFromHeaders): its status, else its
            # gRPC status; most responses are neither and cost a set lookup.
            retriable = status if status in entry.retry_statuses else outcome
            if retriable is not None and retry.may_retry(retriable):
                await attempt.drop_response()
                raise TryFailed(retriable, local_reply.UPSTREAM_RESET, retry_approved=True)
            if grpc_status is not None:
                exchange.grpc_status = str(grpc_status)
            if await relay(exchange, attempt, response, first, sink):
                attempt.finish()
                done = True
        finally:
            host.active_requests -= 1
            if not done:
                attempt.abort()  # the try is for nobody now


def _set_attempt_count(headers: Headers, number: int) -> None:
    """The forwarded request's last field is its try number (``_forwarded_request``)."""
    count = _ATTEMPT_NUMBERS[number - 1] if number <= len(_ATTEMPT_NUMBERS) else b"%d" % number
    headers[-1] = (ATTEMPT_COUNT, count)
