"""The HTTP/2 connection manager: one downstream connection (prior knowledge, RFC 9113 §3.3),
each of its streams served by its own task (``forward.StreamHandler``), concurrently, up to the
MAX_CONCURRENT_STREAMS we advertise.

It takes over the session's downstream transport after sniffing, as the HTTP/1.1 manager does,
and offers the session the same few methods (run, progress, abort, abort_upstream). A client's
RST_STREAM cancels that stream's task; our drain sends GOAWAY, lets the streams in flight
finish and refuses new ones (REFUSED_STREAM, which clients retry elsewhere).
"""

from __future__ import annotations

import asyncio
import random

import h2.events
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from proxy.config.model import Service, ServicePort
from proxy.http.router import HttpRouter
from proxy.stats import listener_labels

from .endpoint import H2Endpoint, H2Stream
from .forward import StreamHandler


class Http2ConnectionManager(H2Endpoint):
    """Serves one downstream HTTP/2 connection to a mesh service's port."""

    def __init__(
        self,
        session,
        service: Service,
        port: ServicePort,
        router: HttpRouter,
        rng: random.Random,
    ) -> None:
        super().__init__(session.worker.loop, client_side=False)
        self.session = session
        self.worker = session.worker
        self.service = service
        self.port = port
        self.router = router
        self.rng = rng
        self.handlers: dict[int, StreamHandler] = {}
        self.draining = False
        self._last_stream_id = 0
        self.worker.stats.inc("downstream_cx_http2_total", listener_labels(session.listener.name))

    # --- what the session calls ---------------------------------------------------------

    async def run(self) -> None:
        """Until the connection is closed (by the client, a GOAWAY or the idle check)."""
        await self.closed()

    def progress(self) -> int:
        return self.received + self.sent

    def abort(self) -> None:
        self.abort_upstream()
        super().abort()

    def abort_upstream(self) -> None:
        for handler in list(self.handlers.values()):
            if handler.task is not None:
                handler.task.cancel()

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


def make_manager(
    session,
    service: Service,
    port: ServicePort,
    transport: asyncio.Transport,
    early: bytes,
    eof: bool,
) -> Http2ConnectionManager:
    """Hand the session's downstream transport (and the bytes sniffing read) to a new manager."""
    worker = session.worker
    manager = Http2ConnectionManager(
        session, service, port, worker.http_router(service), worker.rng
    )
    transport.set_protocol(manager)
    manager.connection_made(transport)
    if early:
        manager.data_received(early)
    if eof:
        manager.close()
    return manager
