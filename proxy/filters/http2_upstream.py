"""One try of a request as a new stream on the host's multiplexed HTTP/2 connection (the
pipeline's ``UpstreamTry``).

The body is sent by its own task while the response is read, so a streaming call (gRPC) flows
both ways at once. A failure before the response head is ``TryFailed``, after it
``UpstreamCut`` (UR when the upstream reset the stream, UC when the whole connection went).
"""

from __future__ import annotations

import asyncio
import contextlib

from h2.errors import ErrorCodes

from proxy.http.events import Headers, InformationalResponse, Request, Response
from proxy.http2.client import Http2Upstream
from proxy.http2.endpoint import CONNECTION_GONE, H2Stream, StreamGone
from proxy.http2.messages import h2_request_headers, response_from_h2, wants_trailers
from proxy.outcomes import Flag, Outcome
from proxy.pipeline import local_reply
from proxy.pipeline.errors import TryFailed, UpstreamCut
from proxy.pipeline.exchange import PENDING, Exchange, Pending, RequestBody
from proxy.pipeline.local_reply import LocalReply
from proxy.upstream.cluster import ClusterRuntime
from proxy.upstream.connector import ConnectFailed, Connector, Source
from proxy.upstream.hosts import Host

# Envoy's text and flag for a stream the upstream reset before answering.
UPSTREAM_REMOTE_RESET = LocalReply(
    503,
    Flag.UPSTREAM_REMOTE_RESET,
    b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
)


class Http2Try:
    __slots__ = (
        "_cluster",
        "_connector",
        "_host",
        "_pump",
        "_source",
        "end",
        "stream",
        "trailers",
        "upstream",
    )

    def __init__(
        self, connector: Connector, source: Source, cluster: ClusterRuntime, host: Host
    ) -> None:
        self._connector = connector
        self._source = source
        self._cluster = cluster
        self._host = host
        self.upstream: Http2Upstream | None = None
        self.stream: H2Stream | None = None
        self.trailers: Headers = []
        self.end = False
        self._pump: asyncio.Task[None] | None = None

    async def start(
        self, exchange: Exchange, request: Request, body: RequestBody
    ) -> Response | InformationalResponse:
        """A stream on the host's connection (waiting for one being made, or making one),
        the request head, the body from a task of its own, then the response head."""
        try:
            upstream = await self._connector.http2(self._cluster, self._host, self._source)
        except (ConnectFailed, ConnectionError):  # ConnectionError: a shared connect failed
            raise TryFailed(Outcome.CONNECT_FAILURE, local_reply.CONNECT_FAILURE) from None
        self.upstream = upstream
        exchange.upstream_principal = upstream.peer_principal
        te_trailers = wants_trailers(exchange.request.headers)
        headers = h2_request_headers(request.method, request.target, request.headers, te_trailers)
        try:
            self.stream = stream = upstream.open_stream(headers, end=body.empty)
        except StreamGone:
            raise TryFailed(Outcome.RESET, UPSTREAM_REMOTE_RESET) from None
        if not body.empty:
            self._pump = upstream.loop.create_task(_send_body(stream, body))
            self._pump.add_done_callback(_retrieve)
        try:
            response = response_from_h2(await stream.wait_head())
        except StreamGone as gone:
            reply = local_reply.UPSTREAM_RESET if gone.code == CONNECTION_GONE else None
            raise TryFailed(Outcome.RESET, reply or UPSTREAM_REMOTE_RESET) from None
        self.end = stream.fully_received
        if self.end:  # trailers that came right after the head, in the same read
            self.trailers = stream.trailers
        return response

    def poll(self) -> bytes | Pending | None:
        stream = self._stream()
        stream.consumed()  # the part taken before was forwarded: its window reopens
        if stream.buffered:
            return stream.take()
        if stream.ended:
            self.trailers = stream.trailers
            return None
        return PENDING

    async def read(self) -> bytes | None:
        stream = self._stream()
        stream.consumed()
        try:
            data = await stream.read()
        except StreamGone as gone:
            # the stream reset (UR), or the whole connection closed under it (UC)
            raise UpstreamCut(_cut_flag(gone.code)) from None
        if data is None:
            self.trailers = stream.trailers
        return data

    async def drop_response(self) -> None:
        """A retried response: reset its stream; the connection goes on for other streams."""
        self.abort()

    def finish(self) -> None:
        """The response is complete; a request body still being sent is no longer wanted."""
        stream = self.stream
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            if stream is not None:
                stream.reset(ErrorCodes.NO_ERROR)
        self._release()

    def abort(self) -> None:
        """Reset the stream (RST_STREAM CANCEL): the connection and its other streams stay."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        if self.stream is not None:
            self.stream.reset(ErrorCodes.CANCEL)
        self._release()

    def switch_protocols(self) -> object:
        raise AssertionError("an HTTP/2 upstream never answers 101")

    def _release(self) -> None:
        stream, upstream = self.stream, self.upstream
        if stream is not None and upstream is not None:
            upstream.forget(stream)
            self._cluster.http2_pool(upstream.loop).stream_done(upstream)
        self.stream = None

    def _stream(self) -> H2Stream:
        stream = self.stream
        if stream is None:  # aborted (the try is over): nothing more will come
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION)
        return stream


async def _send_body(stream: H2Stream, body: RequestBody) -> None:
    async for chunk in body.chunks():
        await stream.send_data(chunk)
        body.consumed()
    if body.trailers:
        stream.send_headers(body.trailers, end=True)
    else:
        stream.end_stream()


def _cut_flag(code: int) -> str:
    if code == CONNECTION_GONE:
        return Flag.UPSTREAM_CONNECTION_TERMINATION
    return Flag.UPSTREAM_REMOTE_RESET


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
