"""The HTTP/2 connection manager: one downstream connection (prior knowledge, RFC 9113 §3.3),
each of its streams a request of the pipeline, served by its own task, concurrently, up to
the MAX_CONCURRENT_STREAMS we advertise.

It takes over the session's downstream transport after sniffing, as the HTTP/1.1 manager
does, and offers the session the same few methods (run, progress, drain, abort). What is
HTTP/2's own stays here: a client's RST_STREAM cancels that stream's task (flag DR), which
resets the upstream try on its way out; our drain sends GOAWAY, lets the streams in flight
finish and refuses new ones (REFUSED_STREAM, which clients retry elsewhere); a request body
left unread after the response is refused with RST_STREAM NO_ERROR (§8.1); a gRPC call is
recognised by its content-type, so that the pipeline applies gRPC's status rules to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.events
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from proxy.http.events import Headers, InformationalResponse, Request
from proxy.http2.endpoint import H2Endpoint, H2Stream, StreamGone, header_block_pending
from proxy.http2.messages import HTTP2_VERSION, h2_response_headers, request_from_h2
from proxy.outcomes import Flag
from proxy.pipeline import grpc, local_reply
from proxy.pipeline.errors import DownstreamGone
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.forward import Pipeline
from proxy.pipeline.kept_body import KeptBody
from proxy.pipeline.respond import send_local_reply
from proxy.pipeline.router import header_value
from proxy.series import Stats
from proxy.stats import Counter, Labels

log = logging.getLogger("detour.proxy")

DOWNSTREAM_CX_HTTP2_TOTAL = Counter(
    "downstream_cx_http2_total", "Downstream connections served as HTTP/2"
)
NOT_SUPPORTED = local_reply.bad_request(501, "CONNECT is not supported")
_NO_REQUEST = Request(b"-", b"-", version=HTTP2_VERSION)


class StreamBody(KeptBody):
    """An HTTP/2 request body (the pipeline's ``RequestBody``), read from the stream as the
    upstream takes it and kept up to REPLAY_LIMIT for a retry. Each chunk is acknowledged to
    the client (its window reopened) by ``consumed``, once written upstream, never on
    arrival: that is the backpressure."""

    __slots__ = ("_stream", "complete", "trailers")

    def __init__(self, stream: H2Stream) -> None:
        super().__init__()
        self._stream = stream
        self.complete = stream.fully_received
        self.trailers: Headers = list(stream.trailers)

    @property
    def empty(self) -> bool:
        """END_STREAM came with the head: nothing to send, nothing to wait for."""
        return self.complete and self.size == 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._replay():
            yield chunk
        stream = self._stream
        while not self.complete:
            try:
                data = await stream.read()
            except StreamGone:
                raise DownstreamGone() from None
            if data is None:
                self.complete = True
                self.trailers = list(stream.trailers)
                return
            self._keep(data)
            if data:
                yield data

    def consumed(self) -> None:
        self._stream.consumed()

    async def discard(self) -> bool:
        """Nothing to read first: what the client still sends after our reply is refused by
        RST_STREAM NO_ERROR (§8.1) and the connection carries on."""
        return True


class StreamHandler:
    """Serves one downstream stream: the pipeline's ``ResponseSink`` for its request."""

    __slots__ = ("manager", "response_bytes", "stream", "task")

    def __init__(self, manager: Http2ConnectionManager, stream: H2Stream) -> None:
        self.manager = manager
        self.stream = stream
        self.response_bytes = 0
        self.task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        stream = self.stream
        pipeline = self.manager.pipeline
        request = request_from_h2(stream.head or [])
        authority = header_value(request.headers, b"host") if request is not None else None
        exchange = pipeline.new_exchange(request or _NO_REQUEST, authority)
        body = StreamBody(stream)
        try:
            if request is None:
                await send_local_reply(exchange, NOT_SUPPORTED, body, self)
            else:
                if grpc.is_grpc(request.headers):
                    exchange.request_protocol = "grpc"
                await pipeline.forward(exchange, body, self)
        except (asyncio.CancelledError, DownstreamGone):
            # the client reset the stream (or the connection went)
            exchange.flags.append(Flag.DOWNSTREAM_REMOTE_RESET)
        except Exception:  # a bug must cost one stream, never a stuck or unaccounted one
            log.exception("HTTP/2 stream %d failed unexpectedly", stream.id)
            exchange.flags.append(Flag.UPSTREAM_CONNECTION_FAILURE)
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            if not body.complete and stream.reset_code is None:
                stream.reset(ErrorCodes.NO_ERROR)  # answered without reading it all (§8.1)
            stream.endpoint.forget(stream)
        pipeline.finish(exchange)
        exchange.request_bytes = body.size
        exchange.response_bytes = self.response_bytes
        self.manager.exchange_done(exchange)

    # --- ResponseSink -------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self.stream.reset_code is not None

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        try:
            self.stream.send_headers(h2_response_headers(status, headers), end)
        except StreamGone:
            raise DownstreamGone() from None

    def send_data(self, data: bytes) -> Awaitable[None]:
        return self._send_data(data)

    async def _send_data(self, data: bytes) -> None:
        """Within the client's flow-control windows (so always awaited)."""
        try:
            await self.stream.send_data(data)
        except StreamGone:
            raise DownstreamGone() from None
        self.response_bytes += len(data)

    def send_end(self, trailers: Headers) -> None:
        try:
            if trailers:
                self.stream.send_headers(list(trailers), end=True)
            else:
                self.stream.end_stream()
        except StreamGone:
            raise DownstreamGone() from None

    async def send_local(self, status: int, headers: Headers, body: bytes, close: bool) -> None:
        self.send_head(status, headers, end=not body)
        if body:
            try:
                await self.stream.send_data(body, end=True)
            except StreamGone:
                raise DownstreamGone() from None
        self.response_bytes = len(body)

    def cut(self, flag: str) -> None:
        timed_out = flag == Flag.UPSTREAM_REQUEST_TIMEOUT
        self.stream.reset(ErrorCodes.CANCEL if timed_out else ErrorCodes.INTERNAL_ERROR)

    async def tunnel(self, upstream: object, switching: InformationalResponse) -> None:
        raise AssertionError("an HTTP/2 request never asks for an upgrade")


class Http2ConnectionManager(H2Endpoint):
    """Serves one downstream HTTP/2 connection to a mesh service's port."""

    def __init__(
        self,
        pipeline: Pipeline,
        loop: asyncio.AbstractEventLoop,
        exchange_done: Callable[[Exchange], None],
        head_timeout: float = 0.0,
        on_head_timeout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(loop, client_side=False)
        self.pipeline = pipeline
        self.exchange_done = exchange_done
        self.handlers: dict[int, StreamHandler] = {}
        self.draining = False
        self._last_stream_id = 0
        # A request head must be whole this long after its first byte arrived (0 = no limit),
        # as for HTTP/1.1: a client that trickles CONTINUATION frames holds no stream, so the
        # idle check alone would let it keep the connection for as long as it likes.
        self.head_timeout = head_timeout
        self._on_head_timeout = on_head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    # --- what the session calls ---------------------------------------------------------

    async def run(self) -> None:
        """Until the connection is closed (by the client, a GOAWAY or the idle check)."""
        await self.closed()

    def progress(self) -> int:
        return self.received + self.sent

    def abort(self) -> None:
        for handler in list(self.handlers.values()):
            if handler.task is not None:
                handler.task.cancel()
        super().abort()

    def finish(self) -> None:
        """The connection closed (``run`` waits for that); stop what is left of it."""
        self.abort()

    def drain(self) -> None:
        """GOAWAY: no new streams; close once the streams in flight are done. h2 itself closes
        its state machine on GOAWAY (no more frames on any stream), so the frame is written
        here and h2 only hears of it at the very end."""
        if self.draining or self.lost:
            return
        self.draining = True
        self.flush_now()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        data = frame.serialize()
        self.sent += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        self._close_when_idle()

    # --- the request headers timeout -----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.head_timeout and not self.lost:
            self._watch_header_block()

    def _watch_header_block(self) -> None:
        pending = header_block_pending(self.conn)
        if pending and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif not pending and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """Envoy's request_headers_timeout: the connection goes (GOAWAY ENHANCE_YOUR_CALM);
        the streams already open are cut with it, as no frame of theirs can pass a header
        block that never ends."""
        self._head_timer = None
        if self._on_head_timeout is not None:
            self._on_head_timeout()
        self.close(ErrorCodes.ENHANCE_YOUR_CALM)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # --- streams ------------------------------------------------------------------------

    def other_event(self, event: h2.events.Event) -> None:
        if type(event) is not h2.events.RequestReceived:
            return
        stream_id = event.stream_id
        if self.draining:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._last_stream_id = max(self._last_stream_id, stream_id)
        stream = H2Stream(self, stream_id)
        stream.head = list(event.headers)
        self.streams[stream_id] = stream
        handler = StreamHandler(self, stream)
        self.handlers[stream_id] = handler
        handler.task = self.loop.create_task(handler.serve())
        handler.task.add_done_callback(lambda _task: self._stream_done(stream_id))

    def stream_reset(self, stream: H2Stream) -> None:
        handler = self.handlers.get(stream.id)
        if handler is not None and handler.task is not None:
            handler.task.cancel()

    def peer_goaway(self, last_stream_id: int) -> None:
        """The client is going away: finish what is in flight, then close."""
        self.draining = True
        self._close_when_idle()

    def _stream_done(self, stream_id: int) -> None:
        self.handlers.pop(stream_id, None)
        if self.draining:
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        if not self.handlers and not self.lost:
            self.close()


def take_over(
    manager: Http2ConnectionManager,
    transport: asyncio.Transport,
    early: bytes,
    eof: bool,
    stats: Stats,
    listener: Labels,
) -> None:
    """Hand the session's downstream transport (and the bytes sniffing read) to ``manager``."""
    stats.inc(DOWNSTREAM_CX_HTTP2_TOTAL, listener)
    transport.set_protocol(manager)
    manager.connection_made(transport)
    if early:
        manager.data_received(early)
    if eof:
        manager.close()
