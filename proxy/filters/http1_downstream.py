"""The HTTP/1.1 connection manager: one downstream connection's requests, in order, each turned
into the pipeline's request and its response written back (Envoy's HttpConnectionManager for
an HTTP/1 codec).

What is HTTP/1.1's own stays here: reading requests one after the other (keep-alive, a bad
request answered 4xx and the connection closed), ``Expect: 100-continue`` (answered by us),
``Host`` required, ``Connection: close`` while draining, trailers only in chunked framing,
and the tunnel after an upgrade's 101 (WebSocket). Everything else, routing to answering, is
the pipeline's.

No timer per request: the session's idle check (byte counts, every half idle timeout) closes
a connection that stays silent between requests.

A client that leaves mid-request is noticed by its connection being lost (a reset, or the
socket closing after ours): its request's task is cancelled, which resets the upstream try,
and the exchange is logged ``DC``. A FIN alone is not taken as leaving: a client may
half-close after its request and still read the answer (BusyBox wget does). Envoy closes on
it (``downstream_remote_disconnect``, reported as envoyproxy/envoy#17160); Detour answers
such clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from proxy.filters.http1_body import Http1Body
from proxy.http.channel import HttpChannel
from proxy.http.channel_errors import ChannelClosed, HeadTimeout
from proxy.http.codec import (
    Connection,
    Data,
    EndOfMessage,
    InformationalResponse,
    ProtocolError,
    Request,
    Response,
)
from proxy.http.events import Headers
from proxy.http.headers import strip_hop_by_hop
from proxy.outcomes import Flag
from proxy.pipeline import local_reply
from proxy.pipeline.errors import DownstreamGone
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.forward import Pipeline
from proxy.pipeline.local_reply import LocalReply
from proxy.pipeline.router import header_value
from proxy.transport.relay import RelayHalf, link

MISSING_HOST: Final = local_reply.bad_request(400, "missing host header")
_UNPARSED: Final = Request(b"-", b"-")  # what the access log shows for a head the codec refused


class Http1ConnectionManager:
    """Serves one downstream HTTP/1.1 connection to a mesh service's port; for the request in
    flight it is also the pipeline's ``ResponseSink``."""

    def __init__(
        self,
        pipeline: Pipeline,
        downstream: HttpChannel,
        loop: asyncio.AbstractEventLoop,
        exchange_done: Callable[[Exchange], None],
        head_timeout: float = 0.0,
        on_head_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        # A request head must be whole this long after its first byte (0 = no limit): 408.
        self.head_timeout = head_timeout
        self._on_head_timeout = on_head_timeout
        self.downstream = downstream
        self.loop = loop
        self._exchange_done = exchange_done
        self.between_requests = False  # waiting for the next request head
        self.draining = False
        self.tunnel_halves: tuple[RelayHalf, RelayHalf] | None = None  # after an upgrade
        self.requests = 0
        self.response_bytes = 0  # body bytes of the response in flight (Istio's measure)
        self._must_close = False  # the response cannot be followed by another request
        self._upgrade: bytes | None = None  # the request's Upgrade value (WebSocket, ...)
        self._client_left = False
        self._task: asyncio.Task[None] | None = None
        downstream.on_lost = self._downstream_lost

    @staticmethod
    def channel(loop: asyncio.AbstractEventLoop) -> HttpChannel:
        return HttpChannel(Connection("server"), loop)

    # --- what the session calls ---------------------------------------------------------

    async def run(self) -> None:
        """Until the connection ends: requests one after the other."""
        self._task = asyncio.current_task(self.loop)
        downstream = self.downstream
        while not downstream.lost:
            try:
                self.between_requests = True
                event = await downstream.next_event(self.head_timeout)
                self.between_requests = False
            except ProtocolError as exc:
                self._refuse_request(local_reply.bad_request(exc.status_hint, exc.reason))
                return
            except HeadTimeout:
                if self._on_head_timeout is not None:
                    self._on_head_timeout()
                self._refuse_request(local_reply.REQUEST_HEADER_TIMEOUT)
                return
            except ChannelClosed:
                return
            if type(event) is not Request:  # ConnectionClosed, or PAUSED after an upgrade
                return
            if not await self._serve(event):
                return
            codec = downstream.codec
            if not codec.keep_alive or downstream.lost:
                return
            codec.start_next_cycle()

    def progress(self) -> int:
        """Bytes moved so far, for the session's idle check."""
        if self.tunnel_halves is not None:
            return self.tunnel_halves[0].received + self.tunnel_halves[1].received
        return self.downstream.received + self.downstream.sent

    def drain(self) -> None:
        """The sidecar is shutting down: an idle keep-alive connection is closed now (a FIN
        the client's pool notices before reusing it); a busy one gets ``Connection: close``
        on its response and closes after it, as Envoy's drain does for HTTP/1."""
        self.draining = True
        if self.between_requests and not self.downstream.codec.trailing_data[0]:
            self.downstream.close()

    def abort(self) -> None:
        if self.tunnel_halves is not None:
            for half in self.tunnel_halves:
                if not half.lost and half.transport is not None:
                    half.transport.abort()
        self.downstream.abort()

    def finish(self) -> None:
        """A FIN after the last response (what was written is flushed first). The channel's
        callback into this manager is unhooked and the task forgotten: the manager and its
        channel referred to each other, a cycle only a full collection would free (see
        ``Session._release``)."""
        self.downstream.on_lost = None
        self._task = None
        self.downstream.close()

    def _downstream_lost(self, _channel: HttpChannel) -> None:
        """The client reset (or its connection ended after ours) in the middle of a request:
        what is in flight for it is for nobody now. Envoy resets the upstream request and
        logs DC; so do we (the try's reset happens as the cancellation unwinds it), and no
        retry follows."""
        if self.between_requests or self.tunnel_halves is not None:
            return
        task = self._task
        if task is not None and not task.done():
            self._client_left = True
            task.cancel()

    # --- one request --------------------------------------------------------------------

    async def _serve(self, request: Request) -> bool:
        """Answer one request; False when the connection must end."""
        pipeline = self.pipeline
        authority = header_value(request.headers, b"host")
        exchange = pipeline.new_exchange(request, authority)
        self.requests += 1
        self.response_bytes, self._must_close = 0, False
        self._upgrade = request.upgrade
        body = Http1Body(self.downstream, request)
        keep = True
        try:
            if authority is None:  # HTTP/1.0 may omit Host; Envoy refuses such requests too
                raise DownstreamGone(MISSING_HOST)
            await pipeline.forward(exchange, body, self)
        except DownstreamGone as gone:
            keep = False
            if gone.reply is not None and not exchange.head_sent:
                exchange.flags.append(gone.reply.flag)
                exchange.status = gone.reply.status
                self._reply_and_close(gone.reply)
            else:
                exchange.flags.append(Flag.DOWNSTREAM_CONNECTION_TERMINATION)
                self.downstream.abort()
        except asyncio.CancelledError:
            if not self._client_left:
                raise
            self._task.uncancel()  # type: ignore[union-attr]  # ours: the client left
            keep = False
            exchange.flags.append(Flag.DOWNSTREAM_CONNECTION_TERMINATION)
        pipeline.finish(exchange)
        if self.tunnel_halves is not None:
            exchange.request_bytes = self.tunnel_halves[0].received
            exchange.response_bytes = self.tunnel_halves[1].received
        else:
            exchange.request_bytes = body.size
            exchange.response_bytes = self.response_bytes
        self._exchange_done(exchange)
        # A body left unread (the upstream answered first) cannot be skipped safely.
        return keep and not self._must_close and body.complete and not self.downstream.lost

    def _refuse_request(self, reply: LocalReply) -> None:
        """A request head the codec refused (431, 400, ...): answered, closed, and reported
        like any request (Envoy logs it too, flag DPE), under a placeholder request line."""
        exchange = self.pipeline.new_exchange(_UNPARSED, None)
        exchange.flags.append(reply.flag)
        exchange.status = reply.status
        self._reply_and_close(reply)
        exchange.response_bytes = len(reply.body)
        self.pipeline.finish(exchange)
        self._exchange_done(exchange)

    def _reply_and_close(self, reply: LocalReply) -> None:
        downstream = self.downstream
        headers = [*reply.headers(), (b"connection", b"close")]
        try:
            downstream.write(downstream.codec.send(Response(reply.status, headers)))
            downstream.write(downstream.codec.send(Data(reply.body)))
            downstream.write(downstream.codec.send(EndOfMessage()))
        except ProtocolError:
            pass  # the codec is in ERROR after a bad request; nothing more can be said
        downstream.close()

    # --- ResponseSink -------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self.downstream.lost

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        downstream = self.downstream
        if self.draining:
            headers.append((b"connection", b"close"))
        codec = downstream.codec
        downstream.write(codec.send(Response(status, headers), trusted=True))
        if end:
            downstream.write(codec.send(EndOfMessage()))

    def send_data(self, data: bytes) -> Awaitable[None] | None:
        downstream = self.downstream
        if downstream.lost:
            raise DownstreamGone()
        self.response_bytes += len(data)
        downstream.write(downstream.codec.send(Data(data)))
        return self._drain() if downstream.write_paused else None

    async def _drain(self) -> None:
        try:
            await self.downstream.drain()
        except ChannelClosed:
            raise DownstreamGone() from None

    def send_end(self, trailers: Headers) -> None:
        codec = self.downstream.codec
        # Trailers travel only in chunked framing (an HTTP/1.1 client, no Content-Length).
        if trailers and not codec.sends_chunked:
            trailers = []
        self.downstream.write(codec.send(EndOfMessage(trailers)))

    async def send_local(self, status: int, headers: Headers, body: bytes, close: bool) -> None:
        if close or self.draining:
            headers.append((b"connection", b"close"))
        downstream = self.downstream
        codec = downstream.codec
        downstream.write(codec.send(Response(status, headers)))
        downstream.write(codec.send(Data(body)))
        downstream.write(codec.send(EndOfMessage()))
        self.response_bytes = len(body)
        if close:
            self._must_close = True
            downstream.close()

    def cut(self, flag: str) -> None:
        self._must_close = True
        self.downstream.abort()

    async def tunnel(self, upstream: object, switching: InformationalResponse) -> None:
        """After a 101 (WebSocket and other upgrades): answer the client with it, then relay
        bytes both ways as the L4 proxy does until both sides are closed. Only now, once the
        upstream agreed, do bytes stop being parsed as HTTP."""
        assert isinstance(upstream, HttpChannel)
        downstream = self.downstream
        headers = strip_hop_by_hop(switching.headers)
        headers += [(b"connection", b"upgrade"), (b"upgrade", self._upgrade or b"")]
        downstream.write(downstream.codec.send(InformationalResponse(101, headers)))
        closed = self.loop.create_future()
        self.tunnel_halves = relay_switched(downstream, upstream, closed)
        await closed
        self._must_close = True


def relay_switched(
    downstream: HttpChannel, upstream: HttpChannel, closed: asyncio.Future[None]
) -> tuple[RelayHalf, RelayHalf]:
    """Hand both connections of a switched exchange to the L4 relay, with what their codecs
    had read past the 101 (the first bytes of the new protocol); ``closed`` is set once both
    sides are closed."""
    downstream.flush()  # before the relay takes the transports over
    upstream.flush()
    open_halves = [2]

    def half_closed(_half: RelayHalf, _exc: Exception | None) -> None:
        open_halves[0] -= 1
        if open_halves[0] == 0 and not closed.done():
            closed.set_result(None)

    halves = []
    for channel in (downstream, upstream):
        half = RelayHalf(half_closed)
        transport = channel.transport
        assert transport is not None
        transport.set_protocol(half)
        half.connection_made(transport)
        data, eof = channel.codec.trailing_data
        if data:
            half.early.append(data)
            half.received += len(data)  # read from that side, as the relay counts
        half.eof = eof
        halves.append(half)
    client_half, server_half = halves
    if server_half.early:  # bytes the upstream sent right after its 101
        client_half.transport.writelines(server_half.early)  # type: ignore[union-attr]
        server_half.early.clear()
    link(client_half, server_half)
    server_half.transport.resume_reading()  # type: ignore[union-attr]
    return client_half, server_half
