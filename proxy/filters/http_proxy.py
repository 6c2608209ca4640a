"""The HTTP/1.1 connection manager: one downstream connection's requests, in order, each routed,
forwarded with retries and timeouts, answered, counted and logged.

Envoy's HttpConnectionManager + router filter in one asyncio task per connection. The decisions
are pure functions elsewhere (``proxy.http.router``: route, destination, retry, back-off,
budget; ``proxy.http.rewrite``: headers; ``proxy.http.local_reply``: our own answers); this
module is the I/O between them, and every wait in it has a deadline:

* between requests: the connection's idle timeout (the service's ``idle_timeout``);
* a request's whole life: the route ``timeout`` when set (504 + UT before the response head,
  an abort after it); without it, the session's idle check aborts a connection on which no
  byte moved for the service's ``idle_timeout``;
* each try until the response head: the retry policy's ``per_try_timeout`` when set;
* an upstream connect: the cluster's ``connect_timeout``.

A request is never retried once its body outgrew ``REPLAY_LIMIT`` (the bytes are gone, so a
second try could not send the same request), nor once any of the response was forwarded.

A client that leaves mid-request is noticed by its connection being lost (a reset, or the
socket closing after ours): the upstream try is reset and the exchange logged ``DC``. A FIN
alone is not taken as leaving: a client may half-close after its request and still read the
answer (BusyBox wget does). Envoy closes on it (``downstream_remote_disconnect``, reported as
envoyproxy/envoy#17160); Detour answers such clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from proxy.config.model import HttpRoute, Service, ServicePort
from proxy.http import local_reply
from proxy.http.channel import ChannelClosed, HttpChannel
from proxy.http.codec import (
    NEED_DATA,
    Connection,
    Data,
    EndOfMessage,
    InformationalResponse,
    ProtocolError,
    Request,
    Response,
)
from proxy.http.headers import strip_hop_by_hop
from proxy.http.local_reply import LocalReply
from proxy.http.retries import TryFailed as _TryFailed
from proxy.http.retries import forward_with_retries
from proxy.http.rewrite import forward_request_headers, forward_response_headers, new_request_id
from proxy.http.router import (
    CONNECT_FAILURE,
    NO_HEALTHY_UPSTREAM,
    PER_TRY_TIMEOUT,
    RESET,
    HttpRouter,
    header_value,
    pick_destination,
    roll_fault,
)
from proxy.http2 import HTTP2_PORTS
from proxy.stats import cluster_labels
from proxy.transport.relay import RelayHalf, link
from proxy.upstream.cluster import ClusterRuntime

log = logging.getLogger("detour.proxy")

REPLAY_LIMIT = 64 * 1024  # request body bytes kept for a retry (Envoy buffers up to 1 MiB)
DISCARD_LIMIT = 64 * 1024  # a retried response's body read to keep its connection, at most


class DownstreamGone(Exception):
    """The client closed or reset, or sent bytes we refuse, in the middle of a request."""

    def __init__(self, reply: LocalReply | None = None) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass
class Exchange:
    """One request and what became of it: what the access log and the metrics report."""

    request: Request
    started: float
    route: HttpRoute | None = None
    cluster: ClusterRuntime | None = None
    status: int = 0
    flags: list[str] = field(default_factory=list)
    upstream_host: tuple[str, int] | None = None
    tries: int = 0
    retries: int = 0
    head_sent: bool = False
    request_bytes: int = 0
    response_bytes: int = 0
    duration: float = 0.0
    body: RequestBody | None = None
    request_id: bytes | None = None  # the client's x-request-id, or the one we generated
    request_protocol: str = "http"  # Istio's label: "grpc" for gRPC calls (over HTTP/2)
    grpc_status: str = ""  # the gRPC status of a gRPC call, when it ended with one


class RequestBody:
    """The downstream request body, read on demand and kept (up to REPLAY_LIMIT) so that a
    retry can send it again."""

    def __init__(self, downstream: HttpChannel, request: Request) -> None:
        self._downstream = downstream
        self._continue_pending = request.expect_continue
        self._chunks: list[bytes] = []
        self.size = 0
        self.replayable = True
        # Set by the EndOfMessage event, which the codec emits even for a request without a
        # body: the downstream codec is ready for the next request only once it was read.
        self.complete = False
        self.trailers: list[tuple[bytes, bytes]] = []

    async def send_to(self, upstream: HttpChannel) -> None:
        """Write the whole body to ``upstream``: what was kept first, then the rest as it comes,
        at the upstream's pace."""
        codec = upstream.codec
        for chunk in self._chunks:
            upstream.write(codec.send(Data(chunk)))
        while not self.complete:
            chunk = await self._read_more()
            if chunk:
                upstream.write(codec.send(Data(chunk)))
                await upstream.drain()
        upstream.write(codec.send(EndOfMessage(self.trailers)))

    async def discard(self) -> bool:
        """Read and drop the rest (a reply was sent without it); False when too much is left."""
        while not self.complete:
            if self.size > DISCARD_LIMIT:
                return False
            await self._read_more()
        return True

    async def _read_more(self) -> bytes:
        downstream = self._downstream
        if self._continue_pending:  # Envoy answers 100-continue itself, then reads the body
            self._continue_pending = False
            downstream.write(downstream.codec.send(InformationalResponse(100)))
        try:
            event = await downstream.next_event()
        except ProtocolError as exc:
            raise DownstreamGone(local_reply.bad_request(exc.status_hint, exc.reason)) from None
        except ChannelClosed:
            raise DownstreamGone() from None
        if type(event) is Data:
            data = event.data
            self.size += len(data)
            if self.replayable:
                if self.size <= REPLAY_LIMIT:
                    self._chunks.append(data)
                else:
                    self.replayable = False
                    self._chunks.clear()
            return data
        if type(event) is EndOfMessage:
            self.complete = True
            self.trailers = event.trailers
            return b""
        raise DownstreamGone()  # ConnectionClosed: the client gave up mid-body


class HttpConnectionManager:
    """Serves one downstream connection whose destination is an HTTP port of a mesh service."""

    def __init__(
        self,
        session,
        service: Service,
        port: ServicePort,
        router: HttpRouter,
        downstream: HttpChannel,
        rng: random.Random,
        fixed_cluster: ClusterRuntime | None = None,
    ) -> None:
        self.session = session
        self.worker = session.worker
        self.service = service
        self.port = port
        self.router = router
        self.downstream = downstream
        self.rng = rng
        self.fixed_cluster = fixed_cluster  # inbound: the local app, whatever the route says
        self.between_requests = False  # waiting for the next request head
        self.draining = False
        self.upstream: HttpChannel | None = None  # the try in progress, for the idle watchdog
        self.h2_try = None  # the try in progress on an HTTP/2 upstream (http2.upstream.H2Try)
        self.tunnel: tuple[RelayHalf, RelayHalf] | None = None  # after an upgrade
        self.requests = 0
        downstream.on_lost = self._downstream_lost

    @staticmethod
    def channel(loop: asyncio.AbstractEventLoop) -> HttpChannel:
        return HttpChannel(Connection("server"), loop)

    def progress(self) -> int:
        """Bytes moved so far, for the session's idle check."""
        upstream = self.upstream
        if self.tunnel is not None:
            return self.tunnel[0].received + self.tunnel[1].received
        return (
            self.downstream.received
            + self.downstream.sent
            + (upstream.received + upstream.sent if upstream is not None else 0)
        )

    def drain(self) -> None:
        """The sidecar is shutting down: an idle keep-alive connection is closed now (a FIN
        the client's pool notices before reusing it); a busy one gets ``Connection: close``
        on its response and closes after it, as Envoy's drain does for HTTP/1."""
        self.draining = True
        if self.between_requests and not self.downstream.codec.trailing_data[0]:
            self.downstream.close()

    def abort(self) -> None:
        if self.tunnel is not None:
            for half in self.tunnel:
                if not half.lost:
                    half.transport.abort()
        self.downstream.abort()
        self.abort_upstream()

    def _downstream_lost(self, _channel: HttpChannel) -> None:
        """The client reset (or its connection ended after ours) in the middle of a request:
        the upstream try in flight is for nobody now. Envoy resets the upstream request and
        logs DC; so do we, and no retry follows (``_try`` checks first)."""
        if self.between_requests:
            return
        upstream = self.upstream
        if upstream is not None:
            # A reset, not a close: a FIN would wait behind whatever request bytes the
            # upstream has not read yet, and the upstream would never learn.
            upstream.reset()
            self.upstream = None
        if self.h2_try is not None:
            self.h2_try.abort()  # RST_STREAM CANCEL; the connection's other streams go on

    def abort_upstream(self) -> None:
        """An upstream connection in the middle of an exchange cannot go back to the pool."""
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None

    # --- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        downstream = self.downstream
        # No timer per request: the session's idle check (byte counts, every half idle
        # timeout) closes a connection that stays silent between requests.
        while not downstream.lost:
            try:
                self.between_requests = True
                event = await downstream.next_event()
                self.between_requests = False
            except ProtocolError as exc:
                self._reply_and_close(local_reply.bad_request(exc.status_hint, exc.reason))
                return
            except ChannelClosed:
                return
            if type(event) is not Request:  # ConnectionClosed, or PAUSED after an upgrade
                return
            keep_going = await self._serve(event)
            if not keep_going:
                return
            codec = downstream.codec
            if not codec.keep_alive or downstream.lost:
                return
            codec.start_next_cycle()
        # the loop ends when the downstream is gone

    def _reply_and_close(self, reply: LocalReply) -> None:
        downstream = self.downstream
        response, body = reply.response(close=True)
        try:
            downstream.write(downstream.codec.send(response))
            downstream.write(downstream.codec.send(Data(body)))
            downstream.write(downstream.codec.send(EndOfMessage()))
        except ProtocolError:
            pass  # the codec is in ERROR after a bad request; nothing more can be said
        downstream.close()

    # --- one request --------------------------------------------------------------------

    async def _serve(self, request: Request) -> bool:
        """Answer one request; False when the connection must end."""
        exchange = Exchange(request, time.time())
        exchange.request_id = header_value(request.headers, b"x-request-id")
        self.requests += 1
        keep = True
        try:
            await self._route_and_forward(exchange)
        except DownstreamGone as gone:
            keep = False
            if gone.reply is not None and not exchange.head_sent:
                exchange.flags.append(gone.reply.flag)
                exchange.status = gone.reply.status
                self._reply_and_close(gone.reply)
            else:
                exchange.flags.append("DC")
                self.downstream.abort()
        except ChannelClosed:
            keep = False
            exchange.flags.append("DC")
        self.upstream = None
        exchange.duration = time.time() - exchange.started
        if exchange.body is not None:
            exchange.request_bytes = exchange.body.size
        self.worker.http_exchange_done(self.session, exchange)
        return keep and not self.downstream.lost

    async def _route_and_forward(self, exchange: Exchange) -> None:
        request = exchange.request
        authority = header_value(request.headers, b"host")
        if authority is None:  # HTTP/1.0 may omit Host; Envoy refuses such requests too
            raise DownstreamGone(local_reply.bad_request(400, "missing host header"))
        route = self.router.match(request.method, request.target, authority, request.headers)
        exchange.route = route
        if route is None:
            await self._local(exchange, local_reply.NO_ROUTE, None)
            return
        body = exchange.body = RequestBody(self.downstream, request)
        delay, abort = roll_fault(route.fault, self.rng.random)
        if delay:
            exchange.flags.append("DI")
            await asyncio.sleep(delay)
        if abort is not None:
            await self._local(exchange, local_reply.fault_abort(abort), body)
            return
        destination = pick_destination(route.destinations, self.rng.random() * 100)
        cluster = (
            self.fixed_cluster
            or self.worker.clusters[(self.service.key, self.port.port, destination.subset or "")]
        )
        exchange.cluster = cluster
        reply = await self._forward_with_timeout(exchange, route, cluster, body)
        if reply is not None:
            await self._local(exchange, reply, body)

    async def _local(self, exchange: Exchange, reply: LocalReply, body: RequestBody | None) -> None:
        """Answer with our own reply; the request body is drained when small, else the
        connection closes after the reply (its unread bytes cannot be skipped safely)."""
        if reply.flag != "-" and reply.flag not in exchange.flags:
            exchange.flags.append(reply.flag)
        exchange.status = reply.status
        if body is None:
            body = exchange.body = RequestBody(self.downstream, exchange.request)
        drained = await body.discard()
        if not drained:
            self._reply_and_close(reply)
            return
        downstream = self.downstream
        response, payload = reply.response(close=self.draining)
        codec = downstream.codec
        downstream.write(codec.send(response))
        downstream.write(codec.send(Data(payload)))
        downstream.write(codec.send(EndOfMessage()))
        exchange.head_sent = True
        exchange.response_bytes = len(payload)

    async def _forward_with_timeout(
        self, exchange: Exchange, route: HttpRoute, cluster: ClusterRuntime, body: RequestBody
    ) -> LocalReply | None:
        """Tries until one is forwarded or the policy gives up, within the route's timeout;
        returns the local reply to send when nothing was forwarded."""
        per_try_timeout = route.retries.per_try_timeout

        def one_try(tried: set, may_retry) -> Awaitable[None]:
            return self._try(exchange, cluster, tried, body, per_try_timeout, may_retry)

        try:
            async with _deadline(route.timeout):
                return await forward_with_retries(
                    exchange, route.retries, cluster, body, self.worker.stats, self.rng, one_try
                )
        except TimeoutError:
            self.worker.stats.inc("upstream_rq_timeout", cluster_labels(cluster.name))
            if self.upstream is not None:
                self.upstream.abort()
            if exchange.head_sent:  # too late for a 504: cut the response short
                exchange.flags.append("UT")
                raise DownstreamGone() from None
            return local_reply.TIMEOUT

    async def _try(
        self,
        exchange: Exchange,
        cluster: ClusterRuntime,
        tried: set,
        body: RequestBody,
        per_try_timeout: float | None,
        may_retry,
    ) -> None:
        """One try on one host: forwards the response, or raises _TryFailed."""
        if self.downstream.lost:  # the client left during the previous try or its back-off
            raise DownstreamGone()
        host = cluster.pick(self.session.peer[0].encode(), avoid=tried)
        if host is None:
            self.worker.stats.inc("upstream_cx_none_healthy", cluster_labels(cluster.name))
            raise _TryFailed(NO_HEALTHY_UPSTREAM, local_reply.NO_HEALTHY_UPSTREAM)
        tried.add(host)
        exchange.tries += 1
        exchange.upstream_host = (host.address, host.port)
        stats = self.worker.stats
        stats.inc("upstream_rq_total", cluster_labels(cluster.name))
        host.active_requests += 1
        upstream: HttpChannel | None = None
        try:
            if self.port.protocol in HTTP2_PORTS:  # the service's port speaks HTTP/2
                from proxy.http2 import bridge  # loads h2 on first use (proxy/http2/__init__)

                try:
                    await bridge.forward_try(
                        self, exchange, cluster, host, per_try_timeout, may_retry
                    )
                except _TryFailed:
                    if self.downstream.lost:  # _downstream_lost cancelled the stream
                        raise DownstreamGone() from None
                    raise
                return
            try:
                async with _deadline(per_try_timeout):
                    upstream = self._pooled(cluster, host)
                    if upstream is None:
                        upstream = await self._connect(cluster, host)
                        if self.downstream.lost:  # the client left while we connected
                            upstream.close()
                            raise DownstreamGone()
                    self.upstream = upstream
                    response = await self._send_request(exchange, upstream, body)
            except TimeoutError:
                if upstream is not None:
                    upstream.abort()
                stats.inc("upstream_rq_per_try_timeout", cluster_labels(cluster.name))
                raise _TryFailed(PER_TRY_TIMEOUT, local_reply.TIMEOUT) from None
            if type(response) is InformationalResponse:  # 101: the upstream accepted an upgrade
                await self._tunnel(exchange, upstream, response)
                return
            if may_retry(response.status):
                await self._discard_response(cluster, host, upstream)
                raise _TryFailed(response.status, local_reply.UPSTREAM_RESET, retry_approved=True)
            await self._relay_response(exchange, cluster, host, upstream, response)
        finally:
            host.active_requests -= 1

    def _pooled(self, cluster: ClusterRuntime, host) -> HttpChannel | None:
        """An idle keep-alive connection to ``host``, if the pool has one."""
        channel = cluster.http_pool(self.worker.loop).take(host)
        if channel is not None:
            self.worker.stats.inc("upstream_cx_pool_reuse", cluster_labels(cluster.name))
        return channel

    async def _connect(self, cluster: ClusterRuntime, host) -> HttpChannel:
        """A new connection to ``host`` (connect timeout, outlier and breaker accounting)."""
        stats = self.worker.stats
        loop = self.worker.loop
        channel = HttpChannel(Connection("client"), loop)
        source = self.session.listener.source_address  # inbound: 127.0.0.6 / ::6
        try:
            async with asyncio.timeout(cluster.service.policy.connect_timeout):
                await loop.create_connection(
                    lambda: channel,
                    host.address,
                    host.port,
                    local_addr=(source, 0) if source else None,
                )
        except (OSError, TimeoutError) as exc:
            cluster.report_connect(host, False)
            stats.inc("upstream_cx_connect_fail", cluster_labels(cluster.name))
            if isinstance(exc, TimeoutError):
                stats.inc("upstream_cx_connect_timeout", cluster_labels(cluster.name))
            raise _TryFailed(CONNECT_FAILURE, local_reply.CONNECT_FAILURE) from None
        cluster.report_connect(host, True)
        stats.inc("upstream_cx_total", cluster_labels(cluster.name))
        stats.inc("upstream_cx_http1_total", cluster_labels(cluster.name))
        return channel

    async def _send_request(
        self, exchange: Exchange, upstream: HttpChannel, body: RequestBody
    ) -> Response | InformationalResponse:
        """Send the request (head and body) and read the response head, skipping 1xx but a
        101 that accepts the request's upgrade."""
        request = exchange.request
        route = exchange.route
        headers = forward_request_headers(
            request,
            self.session.peer[0],
            route.request_headers if route else _NO_OPS,
            self._request_id_for(exchange),
        )
        upstream.exchanges += 1
        try:
            forwarded = Request(request.method, request.target, headers)
            upstream.write(upstream.codec.send(forwarded, trusted=True))
            await body.send_to(upstream)
            while True:
                event = await upstream.next_event()
                if type(event) is Response:
                    return event
                if type(event) is InformationalResponse:
                    if event.status == 101 and request.upgrade is not None:
                        return event
                    continue
                raise ChannelClosed("no response")  # ConnectionClosed before a response
        except DownstreamGone:
            upstream.abort()
            raise
        except (ProtocolError, ChannelClosed, OSError) as exc:
            upstream.abort()
            if self.downstream.lost:  # _downstream_lost reset it: not the upstream's doing
                raise DownstreamGone() from None
            if not isinstance(exc, ProtocolError):
                raise _TryFailed(RESET, local_reply.UPSTREAM_RESET) from None
            if exc.status_hint == 502:
                raise _TryFailed(RESET, local_reply.BAD_UPSTREAM_RESPONSE) from None
            raise

    async def _tunnel(
        self, exchange: Exchange, upstream: HttpChannel, switching: InformationalResponse
    ) -> None:
        """After a 101 (WebSocket and other upgrades): answer the client with it, then relay
        bytes both ways as the L4 proxy does until both sides are closed. Only now, once the
        upstream agreed, do bytes stop being parsed as HTTP."""
        downstream = self.downstream
        headers = strip_hop_by_hop(switching.headers)
        headers += [(b"connection", b"upgrade"), (b"upgrade", exchange.request.upgrade or b"")]
        downstream.write(downstream.codec.send(InformationalResponse(101, headers)))
        downstream.flush()  # before the relay takes the transport over
        upstream.flush()
        exchange.status, exchange.head_sent = 101, True
        closed = self.worker.loop.create_future()
        open_halves = [2]

        def half_closed(_half: RelayHalf, _exc: Exception | None) -> None:
            open_halves[0] -= 1
            if open_halves[0] == 0 and not closed.done():
                closed.set_result(None)

        halves = []
        for channel in (downstream, upstream):
            half = RelayHalf(half_closed)
            transport = channel.transport
            transport.set_protocol(half)
            half.connection_made(transport)
            data, eof = channel.codec.trailing_data
            if data:
                half.early.append(data)
            half.eof = eof
            halves.append(half)
        client_half, server_half = halves
        self.tunnel = (client_half, server_half)
        if server_half.early:  # bytes the upstream sent right after its 101
            client_half.transport.writelines(server_half.early)
            server_half.early.clear()
        link(client_half, server_half)
        server_half.transport.resume_reading()
        await closed
        exchange.request_bytes = client_half.received
        exchange.response_bytes = server_half.received

    @staticmethod
    def _request_id_for(exchange: Exchange):
        """The id every try of this request carries (made once, when the client sent none)."""

        def request_id() -> bytes:
            if exchange.request_id is None:
                exchange.request_id = new_request_id()
            return exchange.request_id

        return request_id

    async def _discard_response(self, cluster: ClusterRuntime, host, upstream: HttpChannel) -> None:
        """A response we will retry: read its (small) body so the connection can be reused."""
        size = 0
        try:
            while size <= DISCARD_LIMIT:
                event = await upstream.next_event()
                if type(event) is Data:
                    size += len(event.data)
                elif type(event) is EndOfMessage:
                    cluster.http_pool(self.worker.loop).give_back(host, upstream)
                    return
                else:
                    break
        except (ProtocolError, ChannelClosed):
            pass
        upstream.abort()

    async def _relay_response(
        self,
        exchange: Exchange,
        cluster: ClusterRuntime,
        host,
        upstream: HttpChannel,
        response: Response,
    ) -> None:
        downstream = self.downstream
        dcodec = downstream.codec
        operations = exchange.route.response_headers if exchange.route else _NO_OPS
        headers = forward_response_headers(response, operations)
        if self.draining:
            headers.append((b"connection", b"close"))
        head = Response(response.status, headers)
        exchange.status = response.status
        start = downstream.sent
        downstream.write(dcodec.send(head, trusted=True))
        exchange.head_sent = True
        ucodec = upstream.codec
        try:
            while True:
                # A small response's body and end arrive with its head: take what is already
                # parsed without a coroutine round trip, wait only when more must come.
                event = ucodec.next_event()
                if event is NEED_DATA:
                    event = await upstream.next_event()
                if type(event) is Data:
                    downstream.write(dcodec.send(event))
                    await downstream.drain()
                elif type(event) is EndOfMessage:
                    downstream.write(dcodec.send(event))
                    break
                else:  # PAUSED cannot happen without an upgrade; ConnectionClosed: cut short
                    raise ChannelClosed("upstream closed mid-response")
        except (ProtocolError, ChannelClosed, OSError):
            upstream.abort()
            if not downstream.lost:  # else the client left first: DC, added by _serve
                exchange.flags.append("UC")
            raise DownstreamGone() from None
        finally:
            exchange.response_bytes = downstream.sent - start
        cluster.http_pool(self.worker.loop).give_back(host, upstream)


_NO_OPS = HttpRoute(name="-").request_headers
_NO_DEADLINE = contextlib.nullcontext()


def _deadline(seconds: float | None):
    """``asyncio.timeout`` when there is a limit; nothing at all otherwise (a Timeout costs a
    few microseconds and two getpid() calls per use on CPython 3.11, per request)."""
    return asyncio.timeout(seconds) if seconds is not None else _NO_DEADLINE
