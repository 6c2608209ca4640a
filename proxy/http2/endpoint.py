"""The asyncio shell around one sans-IO ``h2`` connection, for both ends of the L7 path.

h2 decides what the frames mean; this shell moves bytes, hands each stream's events to the
coroutine that serves the stream, and applies backpressure in both directions without ever
buffering more than the peer was allowed to send:

* receiving: a stream's DATA is queued as it arrives and acknowledged to h2 (which then sends
  WINDOW_UPDATE) only when the consumer says it has forwarded it (``H2Stream.consumed``). So
  what one stream holds is bounded by its receive window, and the connection's by the
  connection window, whatever the peer does;
* sending: ``H2Stream.send_data`` writes at most what the peer's flow-control windows allow,
  waits for WINDOW_UPDATE for the rest, and waits while the transport's buffer is above its
  high-water mark (the same marks as the L4 relay).

Why a Protocol and not asyncio streams: the same reasons as ``proxy.http.channel``; and one
connection serves many coroutines (one per stream), so the waits are per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from h2.errors import ErrorCodes

from proxy.platform.transport import HIGH_WATER, LOW_WATER

Headers = list[tuple[bytes, bytes]]


class _NoHpackDebug:
    """hpack logs each integer and header it codes at debug level through ``logging``: 22
    ``Logger.debug`` calls per proxied HTTP/2 request, 1.6% of its instructions (``make
    bench-guard``), for messages nobody reads in a sidecar (h2's own logger is already its
    no-op ``DummyLogger``)."""

    def debug(self, *args: object) -> None:
        pass


hpack.hpack.log = _NoHpackDebug()  # type: ignore[assignment]

# RFC 9113 §6.5.2 lets each side choose its limits; these are what we advertise.
MAX_CONCURRENT_STREAMS = 100  # Envoy's default for a downstream is 2^31-1; Istio's docs say 100
# A stream's receive window: what one stream may buffer here before its consumer forwards it.
# 256 KiB matches the L4 relay's high-water mark, so a fast sender keeps a fast path busy.
STREAM_WINDOW = 256 * 1024
# The connection window: the sum of all streams' unforwarded bytes (16 full stream windows).
CONNECTION_WINDOW = 4 * 1024 * 1024
MAX_HEADER_LIST_SIZE = 60 * 1024  # the HTTP/1.1 codec's limit on a head, for the same reason

CONNECTION_GONE = -1  # reset_code of streams whose connection closed under them


class StreamGone(ConnectionError):
    """The stream was reset (by the peer or by us), or its connection was lost."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset ({code})")
        self.code = code


class H2Stream:
    """One stream's inbound events (queued) and outbound operations (flow-controlled)."""

    __slots__ = (
        "_chunks",
        "_pending_ack",
        "_waiter",
        "_window_waiter",
        "ended",
        "endpoint",
        "head",
        "id",
        "received",
        "reset_code",
        "sent",
        "trailers",
    )

    def __init__(self, endpoint: H2Endpoint, stream_id: int) -> None:
        self.endpoint = endpoint
        self.id = stream_id
        self.head: Headers | None = None  # request headers (server) / response headers (client)
        self.trailers: Headers = []
        self.ended = False  # the peer sent END_STREAM
        self.reset_code: int | None = None
        self.received = 0  # DATA payload bytes read from the peer
        self.sent = 0  # DATA payload bytes sent to the peer
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._pending_ack = 0
        self._waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None

    # --- inbound ------------------------------------------------------------------------

    async def wait_head(self) -> Headers:
        while self.head is None:
            self._raise_if_gone()
            await self._wait()
        return self.head

    async def read(self) -> bytes | None:
        """The next DATA payload, or None at the end of the stream (trailers are then in
        ``trailers``). What it returns counts against the window until ``consumed``."""
        while not self._chunks:
            if self.ended:
                return None
            self._raise_if_gone()
            await self._wait()
        return self.take()

    @property
    def buffered(self) -> bool:
        """A DATA payload is queued: ``take`` returns it without waiting."""
        return bool(self._chunks)

    @property
    def fully_received(self) -> bool:
        """The peer ended the stream and everything it sent was read."""
        return self.ended and not self._chunks

    def take(self) -> bytes:
        """The next queued DATA payload (``buffered`` must be true)."""
        data, flow = self._chunks.popleft()
        self._pending_ack += flow
        return data

    def consumed(self) -> None:
        """Everything read so far was forwarded: give the window back to the peer."""
        if self._pending_ack:
            self.endpoint.acknowledge(self.id, self._pending_ack)
            self._pending_ack = 0

    # --- outbound -----------------------------------------------------------------------

    def send_headers(self, headers: Headers, end: bool = False) -> None:
        self._raise_if_gone()
        self.endpoint.send_headers(self.id, headers, end)

    async def send_data(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` as the peer's windows allow, then wait for the transport to drain."""
        endpoint = self.endpoint
        view = memoryview(data)
        while view:
            self._raise_if_gone()
            window = endpoint.send_window(self.id)
            if window <= 0:
                await self._wait_window()
                continue
            size = min(window, len(view))
            endpoint.send_data(self.id, view[:size].tobytes(), end and size == len(view))
            self.sent += size
            view = view[size:]
            await endpoint.writable()
        if end and not data:
            self.end_stream()

    def end_stream(self) -> None:
        """END_STREAM with no more data (an empty DATA frame)."""
        self._raise_if_gone()
        self.endpoint.end_stream(self.id)

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        """Reset the stream (RST_STREAM), unless it is already gone."""
        if self.reset_code is None:
            self.reset_code = code
            self.endpoint.reset_stream(self.id, code)
        self._wake()

    # --- called by the endpoint ---------------------------------------------------------

    def on_data(self, data: bytes, flow: int) -> None:
        self.received += len(data)
        self._chunks.append((data, flow))
        self._wake()

    def on_gone(self, code: int) -> None:
        """Reset by the peer, or the connection is lost: waiters raise StreamGone, and the
        window of data nobody will read is given back to the connection."""
        if self.reset_code is None:
            self.reset_code = code
        unread = sum(flow for _, flow in self._chunks) + self._pending_ack
        self._chunks.clear()
        self._pending_ack = 0
        if unread and code != CONNECTION_GONE:
            self.endpoint.acknowledge(self.id, unread)
        self._wake()
        self.wake_window()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake_window(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _raise_if_gone(self) -> None:
        if self.reset_code is not None:
            raise StreamGone(self.reset_code)

    async def _wait(self) -> None:
        self._waiter = self.endpoint.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _wait_window(self) -> None:
        self._window_waiter = self.endpoint.loop.create_future()
        try:
            await self._window_waiter
        finally:
            self._window_waiter = None


_HEADER_FRAME_TYPES = (0x1, 0x9)  # HEADERS, CONTINUATION


def header_block_pending(conn: h2.connection.H2Connection) -> bool:
    """Whether a request head is arriving and not yet whole: a HEADERS frame waiting for its
    CONTINUATIONs, or the first bytes of a HEADERS or CONTINUATION frame. h2 keeps both in
    its frame buffer, which has no public view: read from its fields here, in one place, and
    pinned by tests/unit/proxy/http2/test_header_block.py against the h2 in use."""
    buffer = conn.incoming_buffer
    if buffer._headers_buffer:
        return True
    unparsed = buffer._data
    return len(unparsed) >= 4 and unparsed[3] in _HEADER_FRAME_TYPES


class H2Endpoint(asyncio.Protocol):
    """A transport plus an ``H2Connection``; subclasses say what a new stream means.

    Longer than the project's ~200 lines per class because it is the one place that owns the
    h2 state: the Protocol callbacks, the dispatch of h2's events to streams and the
    flow-controlled sends all touch the same connection object and windows."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client_side: bool) -> None:
        self.loop = loop
        # Inbound heads are validated (RFC 9113 §8.2); outbound ones are not validated again:
        # they are heads h2 (downstream) or the HTTP/1.1 codec (upstream) already parsed,
        # lowercased and stripped of connection fields, and the checks were a tenth of a
        # request's cost.
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.goaway = False  # the peer sent GOAWAY: no new streams on this connection
        self.received = 0
        self.sent = 0
        self._write_paused = False
        self._flush_scheduled = False
        self._unflushed = 0  # DATA bytes queued in h2 since the last send
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed_waiter: asyncio.Future[None] | None = None
        self.on_lost: Callable[[H2Endpoint], None] | None = None
        self.peer_principal: str | None = None  # the mesh mTLS peer's, when verified

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush_now()  # h2 queued a GOAWAY with the error
            self.transport.close()  # type: ignore[union-attr]
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def eof_received(self) -> bool:
        return False  # HTTP/2 has no half-close of a connection: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for stream in list(self.streams.values()):
            stream.on_gone(CONNECTION_GONE)
        self.streams.clear()
        self._release_drainers()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drainers()

    # --- events -------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:  # a stream we reset: only the connection window matters
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                stream.on_data(event.data, event.flow_controlled_length)
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream._wake()
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.on_gone(event.error_code)
                self.stream_reset(stream)
        elif kind is h2.events.WindowUpdated:
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.wake_window()
            else:
                self._wake_windows()
        elif kind is h2.events.RemoteSettingsChanged:
            self._wake_windows()  # the initial window may have grown
        elif kind is h2.events.ConnectionTerminated:
            self.goaway = True
            self.peer_goaway(event.last_stream_id or 0)
        else:
            self.other_event(event)

    def other_event(self, event: h2.events.Event) -> None:
        """Requests (server) and responses (client): the subclass's business."""

    def stream_reset(self, stream: H2Stream) -> None:
        """The peer reset ``stream``."""

    def peer_goaway(self, last_stream_id: int) -> None:
        """The peer sent GOAWAY: streams above ``last_stream_id`` were never processed."""

    def _wake_windows(self) -> None:
        for stream in self.streams.values():
            stream.wake_window()

    # --- operations for streams (each flushes what h2 queued) ---------------------------

    def flush(self) -> None:
        """Send what h2 queued, once the current callback ends: the frames that many streams
        produce in one turn of the loop (a burst of requests, a head and its body) leave in
        one send instead of one each, which was a fifth of a request's cost."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        data = self.conn.data_to_send()
        if data and not self.lost:
            self.sent += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def send_headers(self, stream_id: int, headers: Headers, end: bool) -> None:
        try:
            self.conn.send_headers(stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(ErrorCodes.STREAM_CLOSED) from exc
        self.flush()

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        # Frames larger than the peer's SETTINGS_MAX_FRAME_SIZE are split here.
        limit = self.conn.max_outbound_frame_size
        try:
            for start in range(0, len(data), limit):
                last = start + limit >= len(data)
                self.conn.send_data(stream_id, data[start : start + limit], end and last)
            self._unflushed += len(data)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(ErrorCodes.STREAM_CLOSED) from exc
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        try:
            self.conn.end_stream(stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(ErrorCodes.STREAM_CLOSED) from exc
        self.flush()

    def send_window(self, stream_id: int) -> int:
        try:
            return self.conn.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(ErrorCodes.STREAM_CLOSED) from exc

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.acknowledge_received_data(size, stream_id)
        self.flush()

    def reset_stream(self, stream_id: int, code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.on_gone(code)
        if self.lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, code)
        self.flush()

    def forget(self, stream: H2Stream) -> None:
        """The stream's owner is done with it (both directions finished)."""
        self.streams.pop(stream.id, None)
        stream.consumed()

    async def writable(self) -> None:
        """Wait while the transport's buffer is above its high-water mark (a large backlog
        queued in h2 is written first, so that the transport's mark sees it)."""
        if self._unflushed > LOW_WATER:
            self.flush_now()
        while self._write_paused and not self.lost:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost:
            raise StreamGone(CONNECTION_GONE)

    async def closed(self) -> None:
        if self.lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
        await asyncio.shield(self._closed_waiter)

    def close(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY, then close the transport once what was written is flushed."""
        if self.lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(code)
        self.flush_now()
        self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def _release_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
