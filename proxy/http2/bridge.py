"""HTTP/1.1 downstream, HTTP/2 upstream: one try of the HTTP/1.1 manager's request as a stream
on the host's multiplexed connection, for a service whose port declares ``http2`` or ``grpc``.

The HTTP/1.1 manager keeps everything else (routing, the retry loop, the route timeout, local
replies); this is only its ``_try`` body for such a port: the request head re-encoded for
HTTP/2, the body streamed from the downstream codec at the upstream's pace, the response head
and body re-framed by the downstream codec (chunked when the upstream gave no length), and
HTTP/2 trailers sent as chunked trailers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proxy.http import local_reply
from proxy.http.codec import Data, EndOfMessage, Request, Response
from proxy.http.rewrite import forward_request_headers, forward_response_headers
from proxy.http.router import PER_TRY_TIMEOUT
from proxy.stats import cluster_labels

from .messages import wants_trailers
from .upstream import H2Try, TryFailed, UpstreamCut


class _H1Body:
    """The HTTP/1.1 manager's RequestBody seen as a StreamBody: its kept chunks, then the rest
    read from the downstream codec (which applies backpressure by not reading)."""

    def __init__(self, body, request: Request) -> None:
        self._body = body
        # No Content-Length and not chunked: no body (RFC 9112 §6.3), only its end to read.
        self.empty = not request.chunked and not request.content_length

    @property
    def replayable(self) -> bool:
        return self._body.replayable

    @property
    def trailers(self):
        return self._body.trailers

    async def chunks(self) -> AsyncIterator[bytes]:
        body = self._body
        for chunk in list(body._chunks):
            yield chunk
        while not body.complete:
            data = await body._read_more()
            if data:
                yield data

    def consumed(self) -> None:
        """Nothing to acknowledge: HTTP/1.1 has no windows."""


async def forward_try(manager, exchange, cluster, host, per_try_timeout, may_retry) -> None:
    """The HTTP/1.1 manager's try on an HTTP/2 upstream: forwards the response, or raises
    TryFailed before anything was forwarded."""
    worker = manager.worker
    request = exchange.request
    route = exchange.route
    body = exchange.body
    headers = forward_request_headers(
        request,
        manager.session.peer[0],
        route.request_headers,
        manager._request_id_for(exchange),
    )
    source = _H1Body(body, request)
    attempt = manager.h2_try = H2Try(worker, cluster, host)  # for the client leaving
    done = False
    try:
        try:
            async with asyncio.timeout(per_try_timeout):
                await attempt.open()
                if manager.downstream.lost:  # the client left while we connected
                    from proxy.filters.http_proxy import DownstreamGone

                    raise DownstreamGone()
                if source.empty:
                    await body.discard()  # the request's end, so the codec can go on
                forwarded = Request(request.method, request.target, headers)
                await attempt.send(forwarded, source, wants_trailers(request.headers))
                response = await attempt.head()
        except TimeoutError:
            worker.stats.inc("upstream_rq_per_try_timeout", cluster_labels(cluster.name))
            raise TryFailed(PER_TRY_TIMEOUT, local_reply.TIMEOUT) from None
        if may_retry(response.status):
            raise TryFailed(response.status, local_reply.UPSTREAM_RESET, retry_approved=True)
        await _relay(manager, exchange, attempt, response)
        attempt.finish()
        done = True
    finally:
        manager.h2_try = None
        if not done:
            attempt.abort()


async def _relay(manager, exchange, attempt: H2Try, response: Response) -> None:
    downstream = manager.downstream
    codec = downstream.codec
    head = Response(
        response.status, forward_response_headers(response, exchange.route.response_headers)
    )
    exchange.status = response.status
    start = downstream.sent
    downstream.write(codec.send(head))
    exchange.head_sent = True
    try:
        while (data := await attempt.read()) is not None:
            if data:
                downstream.write(codec.send(Data(data)))
                await downstream.drain()
            attempt.consumed()
        # Trailers travel only in chunked framing (an HTTP/1.1 client, no Content-Length).
        chunked = exchange.request.version == b"1.1" and not any(
            name == b"content-length" for name, _ in head.headers
        )
        downstream.write(codec.send(EndOfMessage(list(attempt.trailers) if chunked else [])))
    except UpstreamCut as cut:
        from proxy.filters.http_proxy import DownstreamGone  # that module imports this one

        if not downstream.lost:  # else the client left first: DC, added by the manager
            exchange.flags.append(cut.flag)
        raise DownstreamGone() from None
    finally:
        exchange.response_bytes = downstream.sent - start
