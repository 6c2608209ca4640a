"""The downstream HTTP/1.1 request body: read from the client's connection as an upstream try
sends it, kept up to REPLAY_LIMIT for a retry.

Its own module because it is an async generator, which mypyc does not compile: the connection
manager beside it runs compiled (``proxy.native``), this stays Python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.http.channel import HttpChannel
from proxy.http.channel_errors import ChannelClosed
from proxy.http.codec import (
    NEED_DATA,
    Data,
    EndOfMessage,
    InformationalResponse,
    ProtocolError,
    Request,
)
from proxy.http.events import Headers
from proxy.pipeline import local_reply
from proxy.pipeline.errors import DownstreamGone
from proxy.pipeline.kept_body import KeptBody

DISCARD_LIMIT = 64 * 1024  # request body bytes read and dropped before a local reply, at most


class Http1Body(KeptBody):
    """The downstream request body (the pipeline's ``RequestBody``), read on demand from the
    connection's codec and kept up to REPLAY_LIMIT for a retry."""

    __slots__ = (
        "_continue_pending",
        "_downstream",
        "complete",
        "empty",
        "trailers",
    )

    def __init__(self, downstream: HttpChannel, request: Request) -> None:
        self._downstream = downstream
        self._continue_pending = request.expect_continue
        super().__init__()
        self.complete = False
        self.trailers: Headers = []
        # No Content-Length and not chunked: no body (RFC 9112 §6.3). Its end is parsed with
        # the head already: take it now, so a GET costs no read at all.
        self.empty = not request.chunked and not request.content_length
        if self.empty:
            event = downstream.codec.next_event()
            if type(event) is EndOfMessage:
                self.complete = True
                self.trailers = event.trailers
            elif event is not NEED_DATA:
                self._take(event)

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._replay():
            yield chunk
        while not self.complete:
            data = await self._read_more()
            if data:
                yield data

    def consumed(self) -> None:
        """Nothing to acknowledge: the codec applies backpressure by not being read."""

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
        return self._take(event)

    def _take(self, event: object) -> bytes:
        if type(event) is Data:
            data = event.data
            self._keep(data)
            return data
        if type(event) is EndOfMessage:
            self.complete = True
            self.trailers = event.trailers
            return b""
        raise DownstreamGone()  # ConnectionClosed: the client gave up mid-body
