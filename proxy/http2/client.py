"""One HTTP/2 connection to an upstream host (prior knowledge, RFC 9113 §3.3), multiplexed:
every request is a new stream on it, up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""

from __future__ import annotations

import asyncio

import h2.events
from h2.errors import ErrorCodes

from .endpoint import H2Endpoint, H2Stream, Headers, StreamGone


class Http2Upstream(H2Endpoint):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, client_side=True)
        self.requests = 0  # streams opened, for the pool and the stats

    def has_capacity(self) -> bool:
        """Usable for one more stream: open, no GOAWAY, below the peer's stream limit."""
        if self.lost or self.goaway:
            return False
        # Our own count: h2's open_outbound_streams walks every stream it knows on each call.
        return len(self.streams) < self.conn.remote_settings.max_concurrent_streams

    def open_stream(self, headers: Headers, end: bool) -> H2Stream:
        stream = H2Stream(self, self.conn.get_next_available_stream_id())
        self.streams[stream.id] = stream
        self.requests += 1
        try:
            stream.send_headers(headers, end)
        except StreamGone:
            del self.streams[stream.id]
            raise
        return stream

    def other_event(self, event: h2.events.Event) -> None:
        if type(event) is h2.events.ResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.head = list(event.headers)
                stream._wake()
        # InformationalResponseReceived (100 Continue, 103): nothing to do for a proxy that
        # sends the body without waiting.

    def peer_goaway(self, last_stream_id: int) -> None:
        """Streams the server never processed are refused, so they may be retried; when no
        stream is left the connection is closed."""
        for stream_id in [sid for sid in self.streams if sid > last_stream_id]:
            self.streams.pop(stream_id).on_gone(ErrorCodes.REFUSED_STREAM)
        if not self.streams:
            self.close()

    def forget(self, stream: H2Stream) -> None:
        super().forget(stream)
        if self.goaway and not self.streams:
            self.close()
