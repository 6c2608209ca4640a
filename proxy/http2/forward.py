"""One HTTP/2 stream from the downstream, routed and forwarded with the HTTP/1.1 router's rules:
the same route match, fault injection, weighted destination, route timeout, retry policy,
back-off, retry budget and local replies (``proxy.http.router`` / ``local_reply``), with two
additions for gRPC calls: the ``grpc-timeout`` deadline tightens the route timeout, and a
gRPC status in a Trailers-Only answer (or in trailers right after the head) is a retry
outcome (``unavailable``, ``cancelled``, ...). Local replies to a gRPC client are gRPC-shaped.

Every wait has the deadline the HTTP/1.1 manager documents; in addition a client's
RST_STREAM cancels the stream's task, which resets the upstream stream (or drops the HTTP/1.1
upstream connection) so nothing leaks (flag DR).
"""

from __future__ import annotations

import asyncio
import logging
import time

from h2.errors import ErrorCodes

from proxy.config.model import HttpRoute
from proxy.filters.http_proxy import REPLAY_LIMIT, Exchange
from proxy.http import local_reply
from proxy.http.events import Request, Response
from proxy.http.local_reply import LocalReply
from proxy.http.retries import TryFailed, forward_with_retries
from proxy.http.rewrite import forward_request_headers, forward_response_headers, new_request_id
from proxy.http.router import (
    NO_HEALTHY_UPSTREAM,
    PER_TRY_TIMEOUT,
    RESET,
    header_value,
    pick_destination,
    roll_fault,
)
from proxy.stats import cluster_labels
from proxy.upstream.cluster import ClusterRuntime

from . import grpc
from .body import StreamBody
from .endpoint import H2Stream, StreamGone
from .messages import HTTP2_VERSION, h2_response_headers, request_from_h2, wants_trailers
from .upstream import H1Try, H2Try, UpstreamCut

log = logging.getLogger("detour.proxy")

_NO_OPS = HttpRoute(name="-").request_headers
NOT_SUPPORTED = local_reply.bad_request(501, "CONNECT is not supported")
# The ports whose upstream speaks HTTP/2 to an HTTP/2 client: those declared so, and undeclared
# (auto) ones, whose upstream protocol follows the client's (Istio's useClientProtocol; a gRPC
# client on an undeclared port would otherwise reach its server as HTTP/1.1). An ``http``
# port's upstream is HTTP/1.1 whatever the client speaks.
UPSTREAM_H2_PORTS = ("http2", "grpc", "auto")


class StreamHandler:
    """Serves one downstream stream; ``manager`` is its connection's Http2ConnectionManager."""

    def __init__(self, manager, stream: H2Stream) -> None:
        self.manager = manager
        self.worker = manager.worker
        self.stream = stream
        self.upstream_try: H1Try | H2Try | None = None
        self.response_bytes = 0
        self.task: asyncio.Task | None = None

    async def serve(self) -> None:
        stream = self.stream
        request = request_from_h2(stream.head or [])
        exchange = Exchange(request or Request(b"-", b"-", version=HTTP2_VERSION), time.time())
        exchange.request_protocol = "http"
        body = StreamBody(stream, REPLAY_LIMIT)
        try:
            if request is None:
                await self._local(exchange, NOT_SUPPORTED, body)
            else:
                exchange.request_id = header_value(request.headers, b"x-request-id")
                if grpc.is_grpc(request.headers):
                    exchange.request_protocol = "grpc"
                await self._route_and_forward(exchange, request, body)
        except asyncio.CancelledError:
            exchange.flags.append("DR")  # the client reset the stream (or the connection)
        except StreamGone:
            exchange.flags.append("DR")
        except UpstreamCut as cut:
            exchange.flags.append(cut.flag)
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        except Exception:  # a bug must cost one stream, never a stuck or unaccounted one
            log.exception("HTTP/2 stream %d failed unexpectedly", stream.id)
            exchange.flags.append("UF")
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            self._abort_upstream()
            if not body.complete and stream.reset_code is None:
                stream.reset(ErrorCodes.NO_ERROR)  # answered without reading it all (§8.1)
            stream.endpoint.forget(stream)
        exchange.duration = time.time() - exchange.started
        exchange.request_bytes = body.size
        exchange.response_bytes = self.response_bytes
        self.worker.http_exchange_done(self.manager.session, exchange)

    def _abort_upstream(self) -> None:
        if self.upstream_try is not None:
            self.upstream_try.abort()
            self.upstream_try = None

    # --- routing ------------------------------------------------------------------------

    async def _route_and_forward(self, exchange: Exchange, request: Request, body) -> None:
        manager = self.manager
        route = manager.router.match(
            request.method, request.target, header_value(request.headers, b"host"), request.headers
        )
        exchange.route = route
        if route is None:
            await self._local(exchange, local_reply.NO_ROUTE, body)
            return
        rng = manager.rng
        delay, abort = roll_fault(route.fault, rng.random)
        if delay:
            exchange.flags.append("DI")
            await asyncio.sleep(delay)
        if abort is not None:
            await self._local(exchange, local_reply.fault_abort(abort), body)
            return
        destination = pick_destination(route.destinations, rng.random() * 100)
        key = (manager.service.key, manager.port.port, destination.subset or "")
        cluster = self.worker.clusters[key]
        exchange.cluster = cluster
        deadline = route.timeout
        if exchange.request_protocol == "grpc":
            timeout = grpc.parse_timeout(header_value(request.headers, b"grpc-timeout"))
            deadline = grpc.request_deadline(route.timeout, timeout)
        try:
            async with asyncio.timeout(deadline):
                reply = await self._forward(exchange, request, route, cluster, body)
        except TimeoutError:
            self.worker.stats.inc("upstream_rq_timeout", cluster_labels(cluster.name))
            self._abort_upstream()
            if exchange.head_sent:  # too late for a reply: cut the response short
                exchange.flags.append("UT")
                self.stream.reset(ErrorCodes.CANCEL)
                return
            reply = local_reply.TIMEOUT
        if reply is not None:
            await self._local(exchange, reply, body)

    async def _local(self, exchange: Exchange, reply: LocalReply, body: StreamBody) -> None:
        """Our own answer: gRPC-shaped (Trailers-Only) to a gRPC client, else a short text."""
        if reply.flag != "-" and reply.flag not in exchange.flags:
            exchange.flags.append(reply.flag)
        stream = self.stream
        if exchange.request_protocol == "grpc":
            code, headers = grpc.local_reply_headers(reply)
            exchange.status, exchange.grpc_status = 200, str(code)
            stream.send_headers(headers, end=True)
        else:
            response, payload = reply.response(close=False)
            exchange.status = reply.status
            stream.send_headers(h2_response_headers(reply.status, response.headers), not payload)
            if payload:
                await stream.send_data(payload, end=True)
            self.response_bytes = len(payload)
        exchange.head_sent = True

    # --- retries ------------------------------------------------------------------------

    async def _forward(
        self,
        exchange: Exchange,
        request: Request,
        route: HttpRoute,
        cluster: ClusterRuntime,
        body: StreamBody,
    ) -> LocalReply | None:
        """Tries until one is forwarded or the policy gives up (the HTTP/1.1 manager's loop);
        returns the local reply to send when nothing was forwarded."""
        headers = forward_request_headers(
            request,
            self.manager.session.peer[0],
            route.request_headers if route else _NO_OPS,
            lambda: _request_id(exchange),
        )
        forwarded = Request(request.method, request.target, headers, version=HTTP2_VERSION)
        policy = route.retries

        async def one_try(tried: set, may_retry) -> None:
            await self._try(exchange, forwarded, cluster, tried, body, policy, may_retry)

        return await forward_with_retries(
            exchange, policy, cluster, body, self.worker.stats, self.manager.rng, one_try
        )

    async def _try(
        self,
        exchange: Exchange,
        request: Request,
        cluster: ClusterRuntime,
        tried: set,
        body: StreamBody,
        policy,
        may_retry,
    ) -> None:
        """One try on one host: forwards the response, or raises TryFailed."""
        stats = self.worker.stats
        name = cluster_labels(cluster.name)
        host = cluster.pick(self.manager.session.peer[0].encode(), avoid=tried)
        if host is None:
            stats.inc("upstream_cx_none_healthy", name)
            raise TryFailed(NO_HEALTHY_UPSTREAM, local_reply.NO_HEALTHY_UPSTREAM)
        tried.add(host)
        exchange.tries += 1
        exchange.upstream_host = (host.address, host.port)
        stats.inc("upstream_rq_total", name)
        host.active_requests += 1
        kind = H2Try if self.manager.port.protocol in UPSTREAM_H2_PORTS else H1Try
        attempt = self.upstream_try = kind(self.worker, cluster, host)
        grpc_call = exchange.request_protocol == "grpc"
        try:
            try:
                async with asyncio.timeout(policy.per_try_timeout):
                    await attempt.open()
                    await attempt.send(request, body, wants_trailers(exchange.request.headers))
                    response = await attempt.head()
                first = None
                if grpc_call and not attempt.end:
                    # A status in trailers right after the head decides a retry too; the wait
                    # for it is the route's, not the try's (a stream's first message may take
                    # its time).
                    first = await attempt.read()
            except TimeoutError:
                self._abort_upstream()
                stats.inc("upstream_rq_per_try_timeout", name)
                raise TryFailed(PER_TRY_TIMEOUT, local_reply.TIMEOUT) from None
            except UpstreamCut:
                self._abort_upstream()
                raise TryFailed(RESET, local_reply.UPSTREAM_RESET) from None
            except TryFailed:
                self._abort_upstream()
                raise
            status_code = _grpc_status(response, attempt, first) if grpc_call else None
            outcome = grpc.retry_outcome(status_code)
            if may_retry(response.status) or (outcome is not None and may_retry(outcome)):
                self._abort_upstream()
                raise TryFailed(outcome or response.status, local_reply.UPSTREAM_RESET, True)
            if status_code is not None:
                exchange.grpc_status = str(status_code)
            await self._relay(exchange, attempt, response, first)
            attempt.finish()
            self.upstream_try = None
        finally:
            host.active_requests -= 1

    async def _relay(self, exchange: Exchange, attempt, response: Response, first) -> None:
        """The response to the client: head, body at the client's pace, trailers."""
        stream = self.stream
        route = exchange.route
        operations = route.response_headers if route else _NO_OPS
        head = h2_response_headers(response.status, forward_response_headers(response, operations))
        exchange.status = response.status
        ended = attempt.end or (first is None and exchange.request_protocol == "grpc")
        if ended and not attempt.trailers:
            stream.send_headers(head, end=True)
            exchange.head_sent = True
            return
        stream.send_headers(head)
        exchange.head_sent = True
        data = first
        if not ended:
            if data is None:
                data = await attempt.read()
            while data is not None:
                if data:
                    await stream.send_data(data)
                    self.response_bytes += len(data)
                attempt.consumed()
                data = await attempt.read()
        if attempt.trailers:
            if exchange.request_protocol == "grpc" and not exchange.grpc_status:
                status = grpc.status_of(attempt.trailers)
                exchange.grpc_status = "" if status is None else str(status)
            stream.send_headers(list(attempt.trailers), end=True)
        else:
            await stream.send_data(b"", end=True)


def _grpc_status(response: Response, attempt, first: bytes | None) -> int | None:
    """The call's status when it is already known: in the head (Trailers-Only) or in trailers
    that followed the head with no message."""
    status = grpc.status_of(response.headers)
    if status is None and first is None:
        status = grpc.status_of(attempt.trailers)
    return status


def _request_id(exchange: Exchange) -> bytes:
    """The id every try of this request carries (made once, when the client sent none)."""
    if exchange.request_id is None:
        exchange.request_id = new_request_id()
    return exchange.request_id
