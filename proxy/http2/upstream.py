"""One try of a request on an upstream host, over HTTP/1.1 or HTTP/2 as the service port says,
behind one small interface so the stream forwarder does not care which:

    send(request, body) -> head() -> read()* -> trailers -> finish() | abort()

A failure before the response head raises ``TryFailed`` (the retry policy decides); a failure
after it raises ``UpstreamCut`` (too late for anything but cutting the response short).
Connects are counted as the HTTP/1.1 manager counts them (``upstream_cx_*``), plus Envoy's
``upstream_cx_http2_total``.
"""

from __future__ import annotations

import asyncio
import contextlib

from h2.errors import ErrorCodes

from proxy.http import local_reply
from proxy.http.channel import ChannelClosed, HttpChannel
from proxy.http.codec import (
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
from proxy.http.retries import TryFailed
from proxy.http.router import CONNECT_FAILURE, RESET
from proxy.stats import cluster_labels
from proxy.upstream.cluster import ClusterRuntime

from .body import StreamBody
from .client import Http2Upstream
from .endpoint import CONNECTION_GONE, H2Stream, Headers, StreamGone
from .messages import h1_request_headers, h2_request_headers, response_from_h2

# Envoy's text and flag for a stream the upstream reset before answering.
UPSTREAM_REMOTE_RESET = LocalReply(
    503,
    "UR",
    b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
)


class UpstreamCut(Exception):
    """The upstream closed or reset in the middle of a response; ``flag`` says which."""

    def __init__(self, flag: str) -> None:
        super().__init__(flag)
        self.flag = flag


async def connect(worker, cluster: ClusterRuntime, host, protocol: str) -> asyncio.Protocol:
    """A new upstream connection (``Http2Upstream`` or ``HttpChannel``), counted; TryFailed
    when it cannot be made in the cluster's connect timeout."""
    loop = worker.loop
    stats = worker.stats
    name = cluster_labels(cluster.name)
    upstream = Http2Upstream(loop) if protocol == "h2" else HttpChannel(Connection("client"), loop)
    try:
        async with asyncio.timeout(cluster.service.policy.connect_timeout):
            await loop.create_connection(lambda: upstream, host.address, host.port)
    except (OSError, TimeoutError) as exc:
        cluster.report_connect(host, False)
        stats.inc("upstream_cx_connect_fail", name)
        if isinstance(exc, TimeoutError):
            stats.inc("upstream_cx_connect_timeout", name)
        raise TryFailed(CONNECT_FAILURE, local_reply.CONNECT_FAILURE) from None
    cluster.report_connect(host, True)
    stats.inc("upstream_cx_total", name)
    stats.inc("upstream_cx_http2_total" if protocol == "h2" else "upstream_cx_http1_total", name)
    return upstream


class H1Try:
    """A request on a pooled HTTP/1.1 connection: the body is sent before the response is read,
    as HTTP/1.1 allows no more."""

    def __init__(self, worker, cluster: ClusterRuntime, host) -> None:
        self.worker, self.cluster, self.host = worker, cluster, host
        self.channel: HttpChannel | None = None
        self.trailers: Headers = []
        self.end = False  # the response had no body beyond its head

    async def open(self) -> None:
        pool = self.cluster.http_pool(self.worker.loop)
        channel = pool.take(self.host)
        if channel is not None:
            self.worker.stats.inc("upstream_cx_pool_reuse", cluster_labels(self.cluster.name))
        else:
            channel = await connect(self.worker, self.cluster, self.host, "h1")
        self.channel = channel

    async def send(self, request: Request, body: StreamBody, te_trailers: bool) -> None:
        channel = self.channel
        codec = channel.codec
        headers = h1_request_headers(request.headers, not body.empty)
        channel.exchanges += 1
        try:
            channel.write(codec.send(Request(request.method, request.target, headers)))
            async for chunk in body.chunks():
                channel.write(codec.send(Data(chunk)))
                await channel.drain()
                body.consumed()
            channel.write(codec.send(EndOfMessage(body.trailers)))
        except (ChannelClosed, OSError, ProtocolError):
            channel.abort()
            raise TryFailed(RESET, local_reply.UPSTREAM_RESET) from None

    async def head(self) -> Response:
        channel = self.channel
        try:
            while True:
                event = await channel.next_event()
                if type(event) is Response:
                    return event
                if type(event) is not InformationalResponse:
                    raise ChannelClosed("no response")
        except ProtocolError as exc:
            channel.abort()
            if exc.status_hint == 502:
                raise TryFailed(RESET, local_reply.BAD_UPSTREAM_RESPONSE) from None
            raise TryFailed(RESET, local_reply.UPSTREAM_RESET) from None
        except (ChannelClosed, OSError):
            channel.abort()
            raise TryFailed(RESET, local_reply.UPSTREAM_RESET) from None

    async def read(self) -> bytes | None:
        try:
            event = await self.channel.next_event()
        except (ProtocolError, ChannelClosed, OSError):
            self.channel.abort()
            raise UpstreamCut("UC") from None
        if type(event) is Data:
            return event.data
        if type(event) is EndOfMessage:
            self.trailers = strip_hop_by_hop(event.trailers)
            return None
        self.channel.abort()
        raise UpstreamCut("UC")

    def consumed(self) -> None:
        """Backpressure is the channel's: it stops reading while nobody asks for events."""

    def finish(self) -> None:
        self.cluster.http_pool(self.worker.loop).give_back(self.host, self.channel)

    def abort(self) -> None:
        if self.channel is not None:
            self.channel.abort()


class H2Try:
    """A request as a new stream on the host's multiplexed HTTP/2 connection. The body is sent
    by its own task while the response is read, so a streaming call flows both ways."""

    def __init__(self, worker, cluster: ClusterRuntime, host) -> None:
        self.worker, self.cluster, self.host = worker, cluster, host
        self.upstream: Http2Upstream | None = None
        self.stream: H2Stream | None = None
        self.trailers: Headers = []
        self.end = False
        self._pump: asyncio.Task | None = None

    async def open(self) -> None:
        pool = self.cluster.http2_pool(self.worker.loop)
        try:
            upstream, _new = await pool.connection(
                self.host, lambda: connect(self.worker, self.cluster, self.host, "h2")
            )
        except ConnectionError:  # another try's connect to this host failed
            raise TryFailed(CONNECT_FAILURE, local_reply.CONNECT_FAILURE) from None
        self.upstream = upstream

    async def send(self, request: Request, body: StreamBody, te_trailers: bool) -> None:
        headers = h2_request_headers(request.method, request.target, request.headers, te_trailers)
        try:
            self.stream = self.upstream.open_stream(headers, end=body.empty)
        except StreamGone:
            raise TryFailed(RESET, UPSTREAM_REMOTE_RESET) from None
        if not body.empty:
            self._pump = self.worker.loop.create_task(self._send_body(body))
            self._pump.add_done_callback(_retrieve)

    async def _send_body(self, body: StreamBody) -> None:
        stream = self.stream
        async for chunk in body.chunks():
            await stream.send_data(chunk)
            body.consumed()
        if body.trailers:
            stream.send_headers(body.trailers, end=True)
        else:
            await stream.send_data(b"", end=True)

    async def head(self) -> Response:
        try:
            response = response_from_h2(await self.stream.wait_head())
        except StreamGone as gone:
            raise TryFailed(RESET, _reset_reply(gone.code)) from None
        self.end = self.stream.ended and not self.stream._chunks
        return response

    async def read(self) -> bytes | None:
        try:
            data = await self.stream.read()
        except StreamGone as gone:
            # the stream reset (UR), or the whole connection closed under it (UC)
            raise UpstreamCut("UC" if gone.code == CONNECTION_GONE else "UR") from None
        if data is None:
            self.trailers = self.stream.trailers
        return data

    def consumed(self) -> None:
        self.stream.consumed()

    def finish(self) -> None:
        """The response is complete; a request body still being sent is no longer wanted."""
        stream = self.stream
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            stream.reset(ErrorCodes.NO_ERROR)
        self._release()

    def abort(self) -> None:
        """Reset the stream (RST_STREAM CANCEL): the connection and its other streams stay."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        if self.stream is not None:
            self.stream.reset(ErrorCodes.CANCEL)
        self._release()

    def _release(self) -> None:
        if self.stream is not None and self.upstream is not None:
            self.upstream.forget(self.stream)
            self.cluster.http2_pool(self.worker.loop).stream_done(self.upstream)
            self.stream = None


def _reset_reply(code: int) -> LocalReply:
    """A stream refused before processing (GOAWAY, REFUSED_STREAM) or reset by the upstream."""
    if code == CONNECTION_GONE:
        return local_reply.UPSTREAM_RESET
    return UPSTREAM_REMOTE_RESET


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
