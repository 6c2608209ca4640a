"""The asyncio shell around one sans-IO HTTP/1.1 ``Connection``: bytes in, awaitable events out.

One class serves both ends of the L7 path: the downstream connection (role "server") and each
pooled upstream connection (role "client"). The codec decides what the bytes mean; this shell
only moves them and applies backpressure:

* reading: at most ``READ_AHEAD`` unparsed bytes are buffered; beyond that the transport stops
  reading until somebody awaits the next event (a pipelining or fast-uploading peer cannot
  grow our memory). The loop does not watch a paused socket, so while paused a ``ResetWatch``
  looks at its TCP state: a peer that reset is noticed and the connection is lost
  (``on_lost``) as if the loop had seen it;
* writing: ``drain`` waits while the transport's buffer is above its high-water mark (the
  same marks as the L4 relay), so a slow reader slows the writer down instead of filling RAM.

Why a Protocol and not asyncio streams: the codec already buffers, so a StreamReader would copy
every byte once more, and the L4 relay's transport can be handed to this protocol with
``set_protocol`` after sniffing without a new socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from proxy.platform.transport import HIGH_WATER, LOW_WATER, ResetWatch, reset

from .channel_errors import ChannelClosed, HeadTimeout
from .codec import NEED_DATA, Connection
from .events import Event, _Sentinel

READ_AHEAD: Final = 256 * 1024  # unparsed bytes held before reading pauses


class HttpChannel(asyncio.Protocol):
    """A transport plus a codec; coroutines ``await next_event()`` and ``write()`` / ``drain()``."""

    def __init__(self, codec: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.codec = codec
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.lost_error: Exception | None = None
        self.eof = False
        self.received = 0  # bytes read from the peer (for the access log and metrics)
        self.sent = 0  # bytes written to the peer
        self.exchanges = 0  # requests sent (upstream) or served (downstream) on this connection
        self.peer_principal: str | None = None  # the mesh mTLS peer's, when verified
        self._out: list[bytes] = []  # written, not yet handed to the transport (see write)
        self.idle_since = 0.0  # loop time it went back to its pool (upstream connections)
        self._buffered = 0
        self._reading_paused = False
        self._paused_check: ResetWatch | None = None  # while reading is paused
        self._data_waiter: asyncio.Future[None] | None = None
        self._head_expired = False  # next_event's head deadline passed
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False  # the transport is above its high-water mark
        # Called once when the connection is gone (the pool drops it, a session finishes).
        self.on_lost: Callable[[HttpChannel], None] | None = None
        # Set while an upstream connection sits idle in its pool: the peer closing it then
        # closes ours at once, so it is never picked for a request.
        self.close_on_eof = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.codec.receive_data(data)
        self._buffered += len(data)
        if self._buffered > READ_AHEAD and not self._reading_paused:
            transport = self.transport
            assert transport is not None  # data comes only through a transport
            self._reading_paused = True
            transport.pause_reading()
            self._paused_check = ResetWatch(self.loop, transport, self._reset_while_paused)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.codec.receive_data(b"")
        self._wake()
        # Keep our sending side open (a response may still be on its way), unless the
        # connection idles in a pool: then asyncio closes it and connection_lost tells the pool.
        # A TLS transport closes on the peer's close_notify whatever we answer (and warns if
        # the answer is "keep open").
        return not self.close_on_eof and self.transport.can_write_eof()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:  # else keep what _reset_while_paused found
            self.lost_error = exc
        self._stop_paused_check()
        if not self.eof:
            self.eof = True
            self.codec.receive_data(b"")
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ChannelClosed("connection lost while writing"))
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- for coroutines -----------------------------------------------------------------

    def feed(self, data: bytes, eof: bool) -> None:
        """Bytes read before this protocol took over the transport (sniffing, the L4 relay's
        early-bytes buffer)."""
        if data:
            self.data_received(data)
        if eof:
            self.eof_received()

    async def next_event(self, head_timeout: float = 0.0) -> Event | _Sentinel:
        """The next event; raises RemoteProtocolError (bad bytes) or ChannelClosed (reset).

        ``head_timeout`` (a head is awaited): once some of its bytes are here and the rest
        are not, they must all arrive within that many seconds, else HeadTimeout. The timer is
        armed only for a head that spans reads: one that arrives whole, as nearly every
        request does, costs no timer. A trickling client (slowloris) is cut however steadily
        it sends, since the deadline is not moved by progress."""
        codec = self.codec
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                event = codec.next_event()
                if event is not NEED_DATA:
                    return event
                if self.lost and self.lost_error is not None:
                    raise ChannelClosed(str(self.lost_error))
                if timer is not None and self._head_expired:
                    raise HeadTimeout(f"head incomplete after {head_timeout:g}s")
                if head_timeout and timer is None and codec.buffered:
                    self._head_expired = False
                    timer = self.loop.call_later(head_timeout, self._expire_head)
                self._buffered = 0  # the codec consumed everything it could
                if self._reading_paused and not self.lost:
                    self._reading_paused = False
                    self._stop_paused_check()
                    self.transport.resume_reading()  # type: ignore[union-attr]
                self._data_waiter = self.loop.create_future()
                try:
                    await self._data_waiter
                finally:
                    self._data_waiter = None
        finally:
            if timer is not None:
                timer.cancel()

    def write(self, data: bytes) -> None:
        """Queue bytes; they go out in one send when the current callback ends (or at
        ``flush``/``drain``/``close``). A response is typically a head, a body and an end
        written back to back: one system call instead of three is most of a small request's
        cost on loopback, where each send also runs the receiver's network stack."""
        if data and not self.lost:
            self.sent += len(data)
            out = self._out
            out.append(data)
            if len(out) == 1:
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.lost:
            self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait until the peer has read enough of what we wrote (no-op when not backed up)."""
        if self.lost:
            raise ChannelClosed("connection lost while writing")
        self.flush()
        if not self.write_paused:
            return
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        self._out.clear()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with a TCP RST: the peer learns at once, even with our unsent bytes queued."""
        self._out.clear()
        if self.transport is not None and not self.lost:
            reset(self.transport)

    def _reset_while_paused(self) -> None:
        """The peer reset while our reading was paused (the loop could not see it): the
        connection is lost as the loop would have reported it, with a ConnectionResetError;
        what the kernel still held from that peer is dropped."""
        self._paused_check = None
        self.lost_error = ConnectionResetError("reset by the peer while reading was paused")
        self.abort()

    def _stop_paused_check(self) -> None:
        if self._paused_check is not None:
            self._paused_check.cancel()
            self._paused_check = None

    def _expire_head(self) -> None:
        self._head_expired = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
