"""One try of a request over HTTP/1.1 to an upstream host (the pipeline's ``UpstreamTry``).

The connection comes from the cluster's keep-alive pool or is made by the connector, and goes
back to the pool after a complete exchange. HTTP/1.1 allows no more than this: the request
(head and body) is sent, then the response is read. Failures before the response head are
``TryFailed`` (the retry policy decides), after it ``UpstreamCut``.
"""

from __future__ import annotations

from typing import Final

from proxy.http.channel import HttpChannel
from proxy.http.channel_errors import ChannelClosed
from proxy.http.codec import (
    NEED_DATA,
    Data,
    EndOfMessage,
    InformationalResponse,
    ProtocolError,
    Request,
    Response,
)
from proxy.http.events import Headers
from proxy.http.headers import strip_hop_by_hop
from proxy.outcomes import Flag, Outcome
from proxy.pipeline import local_reply
from proxy.pipeline.errors import TryFailed, UpstreamCut
from proxy.pipeline.exchange import PENDING, Exchange, Pending, RequestBody
from proxy.upstream.cluster import ClusterRuntime
from proxy.upstream.connector import ConnectFailed, Connector, Source
from proxy.upstream.hosts import Host

DISCARD_LIMIT: Final = 64 * 1024  # a retried response's body read to keep its connection, at most
_NONE: Final[Headers] = []  # no trailers (shared: never mutated)


class Http1Try:
    __slots__ = (
        "_cluster",
        "_connector",
        "_ended",
        "_host",
        "_source",
        "_upgrade",
        "channel",
        "end",
        "trailers",
    )

    def __init__(
        self, connector: Connector, source: Source, cluster: ClusterRuntime, host: Host
    ) -> None:
        self._connector = connector
        self._source = source
        self._cluster = cluster
        self._host = host
        self.channel: HttpChannel | None = None
        self._ended = False  # the response's end was read (by poll or read)
        self.end = False  # never known with the head: the body's end is polled for
        self.trailers: Headers = _NONE

    async def start(
        self, exchange: Exchange, request: Request, body: RequestBody
    ) -> Response | InformationalResponse:
        """A connection (pooled or new), the request (head, then the body at the upstream's
        pace; a body of unknown length from an HTTP/2 client is chunked), then the response
        head, skipping 1xx but a 101 that accepts the request's upgrade."""
        connector = self._connector
        channel = connector.pooled_http1(self._cluster, self._host)
        if channel is None:
            try:
                channel = await connector.new_http1(self._cluster, self._host, self._source)
            except ConnectFailed:
                raise TryFailed(Outcome.CONNECT_FAILURE, local_reply.CONNECT_FAILURE) from None
        self.channel = channel
        exchange.upstream_principal = channel.peer_principal
        codec = channel.codec
        upgrade = exchange.request.upgrade is not None
        headers = request.headers
        if exchange.request.version == b"2" and not body.empty:
            headers = _h1_framing(headers)
        channel.exchanges += 1
        received = channel.received  # what the connection had read before this request
        try:
            head = Request(request.method, request.target, headers)
            channel.write(codec.send(head, trusted=True))
            if not body.empty:
                async for chunk in body.chunks():
                    channel.write(codec.send(Data(chunk)))
                    await channel.drain()
                    body.consumed()
            channel.write(codec.send(EndOfMessage(body.trailers)))
            while True:
                event = await channel.next_event()
                if type(event) is Response:
                    return event
                if type(event) is not InformationalResponse:
                    raise ChannelClosed("no response")  # ConnectionClosed before a response
                if event.status == 101 and upgrade:
                    return event
        except ProtocolError as exc:
            # The upstream's bytes broke HTTP (502: UPE), or ours could not be sent; but an
            # upstream that closed without a byte of response is a connection termination.
            answered = channel.received > received
            malformed = exc.status_hint == 502 and answered
            reply = local_reply.BAD_UPSTREAM_RESPONSE if malformed else local_reply.UPSTREAM_RESET
            raise TryFailed(Outcome.RESET, reply) from None
        except (ChannelClosed, OSError):
            raise TryFailed(Outcome.RESET, local_reply.UPSTREAM_RESET) from None

    def poll(self) -> bytes | Pending | None:
        channel = self.channel
        if channel is None:
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION)
        try:
            event = channel.codec.next_event()
        except ProtocolError:
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION) from None
        if type(event) is Data:  # the common case, without a call
            return event.data
        return PENDING if event is NEED_DATA else self._body_part(event)

    async def read(self) -> bytes | None:
        channel = self.channel
        if channel is None:
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION)
        try:
            event = await channel.next_event()
        except (ProtocolError, ChannelClosed, OSError):
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION) from None
        return self._body_part(event)

    def _body_part(self, event: object) -> bytes | None:
        if type(event) is Data:
            return event.data
        if type(event) is EndOfMessage:
            self.trailers = strip_hop_by_hop(event.trailers) if event.trailers else _NONE
            self._ended = True
            return None
        # ConnectionClosed: the response is cut short (PAUSED needs an upgrade)
        raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION)

    async def drop_response(self) -> None:
        """A response we will retry: read its (small) body so the connection can be reused."""
        channel = self.channel
        if channel is None:
            return
        if self._ended:  # its end came with its head: nothing left to read
            self.finish()
            return
        size = 0
        try:
            while size <= DISCARD_LIMIT:
                event = await channel.next_event()
                if type(event) is Data:
                    size += len(event.data)
                elif type(event) is EndOfMessage:
                    self.finish()
                    return
                else:
                    break
        except (ProtocolError, ChannelClosed):
            pass
        self.abort()

    def finish(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            self._cluster.http_pool(channel.loop).give_back(self._host, channel)

    def abort(self) -> None:
        """A RST, not a close: a FIN would wait behind request bytes the upstream has not read
        yet, and the upstream would never learn that nobody wants its answer."""
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.reset()

    def switch_protocols(self) -> HttpChannel:
        channel, self.channel = self.channel, None
        assert channel is not None  # right after start() returned the 101
        return channel


def _h1_framing(headers: Headers) -> Headers:
    """An HTTP/1.1 request head for an HTTP/2 request: a body of unknown length is chunked."""
    if any(name == b"content-length" for name, _ in headers):
        return headers
    return [*headers, (b"transfer-encoding", b"chunked")]
